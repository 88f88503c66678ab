//! Black-box tests of real `dtx` processes: helpers to run a local cluster.
