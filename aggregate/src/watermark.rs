//! The event-time watermark: min over active input partitions of their largest event time, minus the
//! bounded out-of-orderness. Idle partitions are left out (when all are idle, the largest clock counts),
//! and a clock further ahead of the wall clock than `max_future_skew` is capped, so one producer with a
//! bad clock cannot close everyone's windows.

/// One input partition's clock.
#[derive(Debug, Clone, Copy)]
pub struct PartitionClock {
    /// Largest event time seen, if any.
    pub max_ts_ms: Option<i64>,
    /// Silent for longer than the idle timeout.
    pub idle: bool,
}

/// What the watermark computation decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatermarkUpdate {
    pub watermark_ms: Option<i64>,
    /// Partitions whose clock was capped at wall clock + skew.
    pub clamped_partitions: usize,
}

/// Computes the watermark. `now_ms`/`max_future_skew_ms` = `None` disables the cap (replay of history).
pub fn compute(clocks: &[PartitionClock], delay_ms: i64, cap: Option<(i64, i64)>) -> WatermarkUpdate {
    let mut clamped = 0;
    let capped = |ts: i64, clamped: &mut usize| match cap {
        Some((now, skew)) if ts > now + skew => {
            *clamped += 1;
            now + skew
        }
        _ => ts,
    };
    let active: Vec<&PartitionClock> = clocks.iter().filter(|c| !c.idle).collect();
    let wm = if active.is_empty() {
        clocks.iter().filter_map(|c| c.max_ts_ms).map(|t| capped(t, &mut clamped)).max()
    } else if active.iter().any(|c| c.max_ts_ms.is_none()) {
        None // an active partition that has not delivered yet holds the watermark
    } else {
        active.iter().filter_map(|c| c.max_ts_ms).map(|t| capped(t, &mut clamped)).min()
    };
    WatermarkUpdate { watermark_ms: wm.map(|w| w - delay_ms), clamped_partitions: clamped }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(ts: Option<i64>, idle: bool) -> PartitionClock {
        PartitionClock { max_ts_ms: ts, idle }
    }

    #[test]
    fn min_over_active_partitions_minus_delay() {
        let w = compute(&[c(Some(100), false), c(Some(50), false)], 10, None);
        assert_eq!(w.watermark_ms, Some(40));
    }

    #[test]
    fn idle_partitions_do_not_hold_it_back() {
        let w = compute(&[c(Some(100), false), c(Some(50), true), c(None, true)], 0, None);
        assert_eq!(w.watermark_ms, Some(100));
        let all_idle = compute(&[c(Some(100), true), c(Some(50), true)], 0, None);
        assert_eq!(all_idle.watermark_ms, Some(100));
    }

    #[test]
    fn silent_active_partition_holds_it() {
        assert_eq!(compute(&[c(Some(100), false), c(None, false)], 0, None).watermark_ms, None);
    }

    #[test]
    fn a_clock_far_ahead_of_wall_time_is_capped() {
        let day = 86_400_000;
        let w = compute(&[c(Some(1_000 + day), true), c(Some(900), true)], 0, Some((1_000, 3_600_000)));
        assert_eq!(w.watermark_ms, Some(1_000 + 3_600_000));
        assert_eq!(w.clamped_partitions, 1);
    }
}
