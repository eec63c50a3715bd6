//! Delayed jobs against a real server (the timing test is in `queue_delayed_timing.rs`).

mod support;

use std::time::Duration;

use redkit::testing::wait_until;
use support::*;

#[test]
fn schedule_in_uses_the_servers_clock_and_move_due_reports_the_next() -> TestResult {
    let server = server();
    let redis = redis(&server);
    let queue = redkit::ListQueue::builder(&redis, "later").build()?;
    let delayed = queue.delayed();
    delayed.schedule_in("a", Duration::from_millis(100))?;
    delayed.schedule_in("b", Duration::from_secs(60))?;
    let (moved, next) = delayed.move_due()?;
    assert_eq!(moved, 0);
    assert!(
        next.is_some_and(|d| d <= Duration::from_millis(100)),
        "{next:?}"
    );
    wait_until(Duration::from_secs(5), "a due", || {
        delayed.move_due().is_ok_and(|(n, _)| n == 1)
    })?;
    assert_eq!(queue.len()?, 1);
    assert_eq!(delayed.len()?, 1);
    assert!(delayed.scheduler_every(Duration::ZERO).is_err());
    Ok(())
}
