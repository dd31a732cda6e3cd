//go:build !unix

package pool

// signalReady does nothing: no pool runs on this system.
func signalReady() error { return nil }
