//go:build race

package electortest

// Scale multiplies the test lease timings: the race detector slows code
// down several times.
const Scale = 3
