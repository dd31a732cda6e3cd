package cli

import (
	"fmt"
	"reflect"
	"strings"
	"time"

	"github.com/alecthomas/kong"
)

// Numeric flags take negative values as they are written: "--in -5s",
// "--max-attempts -1", "-n -1". Kong's scanner reads a value that starts
// with '-' as the next flag and refuses it ("expected duration value but
// got "-5s" (short flag); perhaps try --in="-5s"?"), so a user who typed a
// negative number by mistake got a parser error, and then forq's own when
// trying the suggested form. With these mappers a negative number reaches
// the command, whose check says what the flag allows; a word after a
// numeric flag ("--max-attempts --wait") is still the next flag.

// numberMappers are kong options that let int, float and duration flags
// take a negative number as their value.
func numberMappers() []kong.Option {
	defaults := kong.NewRegistry().RegisterDefaults()
	durType := reflect.TypeFor[time.Duration]()
	return []kong.Option{
		kong.TypeMapper(durType, negativeValue(defaults.ForType(durType), "a duration like 5s")),
		kong.KindMapper(reflect.Int, negativeValue(defaults.ForType(reflect.TypeFor[int]()), "a number")),
		kong.KindMapper(reflect.Int32, negativeValue(defaults.ForType(reflect.TypeFor[int32]()), "a number")),
		kong.KindMapper(reflect.Int64, negativeValue(defaults.ForType(reflect.TypeFor[int64]()), "a number")),
		kong.KindMapper(reflect.Float64, negativeValue(defaults.ForType(reflect.TypeFor[float64]()), "a number")),
	}
}

// negativeValue wraps kong's mapper for a numeric type: when the token
// after the flag is a negative number (by isNegative), it is passed as the
// flag's value instead of being read as a flag. A short flag's value
// written "-n=-1" loses its '='. Another flag where the value should be
// ("--max-attempts --wait") is an error saying what was expected, not
// kong's suggestion to write --max-attempts="--wait".
func negativeValue(m kong.Mapper, want string) kong.MapperFunc {
	return func(ctx *kong.DecodeContext, target reflect.Value) error {
		t := ctx.Scan.Peek()
		if t.Type == kong.EOLToken {
			return fmt.Errorf("expected %s, got nothing", want)
		}
		if s, ok := t.Value.(string); ok {
			switch {
			case t.Type == kong.UntypedToken && isNegative(s):
				ctx.Scan.Pop()
				ctx.Scan.PushTyped(s, kong.FlagValueToken)
			case t.Type == kong.UntypedToken && strings.HasPrefix(s, "-"):
				return fmt.Errorf("expected %s, got %q (a flag, or its value is missing)", want, s)
			case t.Type == kong.ShortFlagTailToken && strings.HasPrefix(s, "="):
				ctx.Scan.Pop()
				ctx.Scan.PushTyped(s[1:], kong.FlagValueToken)
			}
		}
		return m.Decode(ctx, target)
	}
}

// isNegative reports whether s is written as a negative number: '-'
// then a digit or a '.'. Whether it is a valid one is for the type's own
// mapper to say ("-5x" is refused as a duration, not read as flags).
func isNegative(s string) bool {
	return len(s) > 1 && s[0] == '-' && (s[1] >= '0' && s[1] <= '9' || s[1] == '.')
}
