//go:build !unix && !windows

package broker

import "errors"

func freeBytes(string) (uint64, error) { return 0, errors.ErrUnsupported }

func fsSize(string) (uint64, error) { return 0, errors.ErrUnsupported }
