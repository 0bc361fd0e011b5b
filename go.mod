module github.com/convex-cluster-manager/ccm

go 1.26.8

require github.com/peterbourgon/ff/v3 v3.4.0
