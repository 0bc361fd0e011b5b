// Package replica is the replication core shared by every daemon that
// reads the WAL stream: the shadow database and its durable position, the
// verified applier of LTX files, following the stream, and bootstrapping a
// shadow from a snapshot. ccm-walapply keeps passives' shadows with it;
// ccm-snapshot replays with it; ccm-backend installs and ccm join
// bootstraps what it produces.
package replica
