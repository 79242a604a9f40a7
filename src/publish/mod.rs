//! Pushing verdicts out to plant systems that subscribe rather than poll.

pub mod mqtt;
