//go:build !race

package walstream

// slow stretches the fault schedule of the fault tests (3 under the race
// detector).
const slow = 1
