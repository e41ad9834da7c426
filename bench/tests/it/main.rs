//! Integration tests of skiff-bench (added with the fake RESP server and the spawn tests).
