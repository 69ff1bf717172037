//! FERROLM_PROFILE=1: where an eager step's time goes. The model's forward marks the end
//! of each stage; with profiling on, each mark waits for the device and charges the time
//! since the previous mark to its stage, per phase (decode steps, other steps). The waits
//! cost time of their own (launch gaps are no longer hidden), so read the shares, not the
//! sum. Off, a mark is one branch.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use candle_core::Device;

use crate::error::Result;

/// (phase, stage) -> (seconds, marks); (phase, "") counts steps.
type Table = BTreeMap<(&'static str, &'static str), (f64, u64)>;

fn table() -> &'static Mutex<Table> {
    static T: OnceLock<Mutex<Table>> = OnceLock::new();
    T.get_or_init(|| Mutex::new(BTreeMap::new()))
}

/// The marks of one forward pass.
pub struct Marks<'d> {
    device: &'d Device,
    phase: &'static str,
    last: Option<Instant>,
}

impl<'d> Marks<'d> {
    /// Starts a step of the phase `phase()` names (asked only when profiling, so an
    /// unprofiled step pays nothing for it); waits for the device first, so earlier work is
    /// not charged.
    pub fn start(
        device: &'d Device,
        enabled: bool,
        phase: impl FnOnce() -> &'static str,
    ) -> Result<Self> {
        if !enabled {
            return Ok(Self {
                device,
                phase: "",
                last: None,
            });
        }
        let phase = phase();
        device.synchronize()?;
        if let Ok(mut t) = table().lock() {
            t.entry((phase, "")).or_insert((0.0, 0)).1 += 1;
        }
        Ok(Self {
            device,
            phase,
            last: Some(Instant::now()),
        })
    }

    /// Charges the time since the last mark (the device's work included) to `stage`.
    pub fn mark(&mut self, stage: &'static str) -> Result<()> {
        let Some(last) = self.last else {
            return Ok(());
        };
        self.device.synchronize()?;
        let now = Instant::now();
        if let Ok(mut t) = table().lock() {
            let e = t.entry((self.phase, stage)).or_insert((0.0, 0));
            e.0 += (now - last).as_secs_f64();
            e.1 += 1;
        }
        self.last = Some(now);
        Ok(())
    }
}

/// Per phase: (steps, [(stage, milliseconds per step)]); clears the table.
pub fn take() -> Vec<(&'static str, u64, Vec<(&'static str, f64)>)> {
    let Ok(mut t) = table().lock() else {
        return Vec::new();
    };
    let mut out: Vec<(&'static str, u64, Vec<(&'static str, f64)>)> = Vec::new();
    for (&(phase, stage), &(secs, _)) in t.iter() {
        if stage.is_empty() {
            continue;
        }
        let steps = t.get(&(phase, "")).map_or(1, |e| e.1.max(1));
        match out.iter_mut().find(|o| o.0 == phase) {
            Some(o) => o.2.push((stage, 1e3 * secs / steps as f64)),
            None => out.push((phase, steps, vec![(stage, 1e3 * secs / steps as f64)])),
        }
    }
    t.clear();
    out
}

/// `take()` as lines: "profile decode: attention 1.23 · down 0.45 · ... ms/step over N steps".
pub fn report() -> Vec<String> {
    take()
        .into_iter()
        .map(|(phase, steps, mut stages)| {
            stages.sort_by(|a, b| b.1.total_cmp(&a.1));
            let total: f64 = stages.iter().map(|s| s.1).sum();
            let parts: Vec<String> = stages
                .iter()
                .map(|(s, ms)| format!("{s} {ms:.2}"))
                .collect();
            format!(
                "profile {phase}: {} = {total:.2} ms/step over {steps} steps",
                parts.join(" · ")
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_are_free_when_off_and_report_per_step_when_on() {
        // Off: marks do nothing.
        let mut m = Marks::start(&Device::Cpu, false, || "decode").unwrap();
        m.mark("x").unwrap();
        assert!(take().is_empty());
        // On: a step and its stage are counted.
        let mut m = Marks::start(&Device::Cpu, true, || "decode").unwrap();
        m.mark("x").unwrap();
        let t = take();
        assert_eq!(t.len(), 1);
        assert_eq!((t[0].0, t[0].1), ("decode", 1));
        assert_eq!(t[0].2.iter().map(|s| s.0).collect::<Vec<_>>(), ["x"]);
        // The table's arithmetic, filled by hand.
        {
            let mut t = table().lock().unwrap();
            t.clear();
            t.insert(("decode", ""), (0.0, 4));
            t.insert(("decode", "attention"), (0.008, 128));
            t.insert(("decode", "mlp"), (0.004, 128));
        }
        let r = report();
        assert_eq!(r.len(), 1);
        assert!(
            r[0].starts_with(
                "profile decode: attention 2.00 · mlp 1.00 = 3.00 ms/step over 4 steps"
            ),
            "{}",
            r[0]
        );
        assert!(take().is_empty(), "report clears the table");
    }
}
