package wire

import "strings"

// Ack is what a JetStream ack subject (a delivered message's reply
// subject) says about the delivery.
type Ack struct {
	// Domain is the JetStream domain, "" for none.
	Domain string
	// Stream and Consumer the message was delivered from.
	Stream, Consumer string
	// Delivered is the broker's delivery count of the message, 1 on its
	// first delivery.
	Delivered uint64
	// Seq is the message's stream sequence, ConsumerSeq its consumer
	// sequence.
	Seq, ConsumerSeq uint64
	// Timestamp is when the message was stored, in Unix nanoseconds.
	Timestamp uint64
	// Pending is how many messages the consumer had left to deliver.
	Pending uint64
}

// ParseAck parses ack subject s, without allocating:
//
//	$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<tm>.<pending> or
//	$JS.ACK.<domain>.<hash>.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<tm>.<pending>[.<token>]
//
// ok is false for a subject that is not one. A number that is not one
// (outside input: anybody can publish with any reply subject) reads as 0.
func ParseAck(s string) (a Ack, ok bool) {
	tok, ok := ackTokens(s)
	if !ok {
		return a, false
	}
	return Ack{
		Domain:      tok[0],
		Stream:      tok[2],
		Consumer:    tok[3],
		Delivered:   parseNum(tok[4]),
		Seq:         parseNum(tok[5]),
		ConsumerSeq: parseNum(tok[6]),
		Timestamp:   parseNum(tok[7]),
		Pending:     parseNum(tok[8]),
	}, true
}

// ackTokens splits an ack subject into domain, account hash, stream,
// consumer, delivered, stream seq, consumer seq, timestamp and pending.
func ackTokens(s string) (tok [9]string, ok bool) {
	rest, found := strings.CutPrefix(s, "$JS.ACK.")
	if !found {
		return tok, false
	}
	n := strings.Count(rest, ".") + 1
	i := 0
	switch {
	case n == 7:
		i = 2
	case n >= 9:
	default:
		return tok, false
	}
	// IndexByte rather than strings.Cut: Cut takes its separator as a
	// string and goes through the general search, twice as slow on
	// these short tokens, and this runs for every delivered task.
	for ; i < len(tok); i++ {
		j := strings.IndexByte(rest, '.')
		if j < 0 {
			tok[i], rest = rest, ""
			continue
		}
		tok[i], rest = rest[:j], rest[j+1:]
	}
	if tok[0] == "_" {
		tok[0] = ""
	}
	return tok, true
}

// parseNum reads a decimal number; anything else is 0. An overflow wraps:
// a delivery count or sequence that large never comes from a broker, and
// Decode bounds what it takes from one.
func parseNum(d string) (n uint64) {
	for i := range len(d) {
		c := d[i]
		if c < '0' || c > '9' {
			return 0
		}
		n = n*10 + uint64(c-'0')
	}
	return n
}
