//go:build !linux

package consumer

// findSupervisor finds none: only Linux has parent-death signals.
func findSupervisor() supervisor { return supervisor{} }
