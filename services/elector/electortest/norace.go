//go:build !race

package electortest

// Scale multiplies the test lease timings (3 under the race detector).
const Scale = 1
