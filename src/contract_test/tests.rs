//! Unit tests of the contract-test planner.
