//! Cache benchmark: multi-get and bulk write against raw pipelines (written next).

fn main() {}
