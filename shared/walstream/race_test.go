//go:build race

package walstream

// slow stretches the fault schedule of the fault tests: the race detector
// slows the appender several times, and faults as frequent as without it
// left no window to make progress in.
const slow = 3
