//! `spectrum`: the strongest `peaks` of the magnitude spectrum of the mean-removed series, from
//! its real FFT (`realfft`). Each peak is `{"freq_hz", "magnitude"}`, largest magnitude first
//! (ties: lower frequency first).
//!
//! - Magnitude is |X_k|, unnormalised, as numpy.fft.rfft gives it: a sine of amplitude A on an
//!   exact bin of an n-point series has magnitude A·n/2. Frequency is k · sample_rate_hz / n.
//! - A peak is a local maximum over the bins k = 1..=n/2 (the DC bin is excluded, and bin 1 and
//!   the last bin compare with their one neighbour): strictly above the bin before it, at least
//!   the bin after it (so a flat top counts once). Bins at or below 1e-10 of the largest
//!   magnitude are float round-off, not peaks: a constant series has none. Fewer than `peaks`
//!   may come back.
//! - `sample_rate_hz` is required with inline values. For telemetry it may be given; otherwise it
//!   is 1000 / the median interval between consecutive timestamps in ms (robust to a few missed
//!   or doubled readings), and a window whose median interval is 0 is refused.
//!
//! Cost O(n log n) for any n (realfft plans mixed-radix or Bluestein FFTs), O(n) memory.

use ciborium::Value;
use realfft::RealFftPlanner;

use super::stats::median;
use super::{float, result_map, values, Args, OpError, Prepared, Series};

/// Default number of peaks.
pub const DEFAULT_PEAKS: u64 = 3;
/// Most peaks a request may ask for.
pub const MAX_PEAKS: u64 = 1024;
/// Magnitudes at or below this fraction of the largest are round-off.
const NOISE_FLOOR: f64 = 1e-10;

/// A validated `spectrum`.
#[derive(Debug)]
pub struct Spectrum {
    sample_rate_hz: Option<f64>,
    peaks: usize,
}

/// Validates `sample_rate_hz` (a finite number > 0, required with inline values) and `peaks`
/// (1..=[`MAX_PEAKS`], default [`DEFAULT_PEAKS`]).
pub fn prepare(args: &Args<'_>) -> Result<Box<dyn Prepared>, OpError> {
    let sample_rate_hz = args.number("sample_rate_hz", None)?;
    match sample_rate_hz {
        None if args.is_inline() => {
            return Err(OpError::BadArgs(
                "sample_rate_hz is required with inline values".into(),
            ))
        }
        Some(rate) if rate <= 0.0 => {
            return Err(OpError::BadArgs(format!(
                "sample_rate_hz must be greater than 0, got {rate}"
            )))
        }
        _ => {}
    }
    let peaks = args.uint("peaks", DEFAULT_PEAKS)?;
    if !(1..=MAX_PEAKS).contains(&peaks) {
        return Err(OpError::BadArgs(format!(
            "peaks must be between 1 and {MAX_PEAKS}, got {peaks}"
        )));
    }
    let peaks = usize::try_from(peaks).expect("at most MAX_PEAKS fits in usize");
    Ok(Box::new(Spectrum {
        sample_rate_hz,
        peaks,
    }))
}

impl Prepared for Spectrum {
    fn run(&self, series: &Series) -> Result<Value, OpError> {
        let xs = values(series)?;
        let rate = match self.sample_rate_hz {
            Some(rate) => rate,
            None => rate_from_timestamps(series.ts.as_deref().unwrap_or_default())?,
        };
        let magnitudes = magnitudes(xs)?;
        let n = xs.len() as f64;
        let peaks = peaks(&magnitudes, self.peaks)
            .into_iter()
            .map(|k| {
                Ok(result_map(vec![
                    ("freq_hz", float("freq_hz", k as f64 * rate / n)?),
                    ("magnitude", float("magnitude", magnitudes[k])?),
                ]))
            })
            .collect::<Result<_, OpError>>()?;
        Ok(result_map(vec![("peaks", Value::Array(peaks))]))
    }
}

/// The sample rate implied by the median interval between consecutive timestamps (ms).
fn rate_from_timestamps(ts: &[u64]) -> Result<f64, OpError> {
    let mut intervals: Vec<f64> = ts
        .windows(2)
        .map(|w| w[1].saturating_sub(w[0]) as f64)
        .collect();
    let median_ms = if intervals.is_empty() {
        0.0
    } else {
        median(&mut intervals)
    };
    if median_ms > 0.0 {
        Ok(1000.0 / median_ms)
    } else {
        Err(OpError::BadArgs(
            "cannot derive sample_rate_hz: the timestamps do not advance; give sample_rate_hz"
                .into(),
        ))
    }
}

/// |X_k| for k = 0..=n/2, of the real FFT of `xs` minus its mean.
fn magnitudes(xs: &[f64]) -> Result<Vec<f64>, OpError> {
    let mean = xs.iter().sum::<f64>() / xs.len() as f64;
    let mut input: Vec<f64> = xs.iter().map(|x| x - mean).collect();
    let fft = RealFftPlanner::<f64>::new().plan_fft_forward(xs.len());
    let mut output = fft.make_output_vec();
    fft.process(&mut input, &mut output)
        .map_err(|e| OpError::Failed(format!("FFT failed: {e}")))?;
    Ok(output.iter().map(|c| c.norm()).collect())
}

/// The bins (k ≥ 1) of the `count` largest local maxima above the noise floor, largest first.
fn peaks(magnitudes: &[f64], count: usize) -> Vec<usize> {
    let largest = magnitudes.iter().skip(1).fold(0.0f64, |a, &b| a.max(b));
    let floor = largest * NOISE_FLOOR;
    let last = magnitudes.len().saturating_sub(1);
    let mut found: Vec<usize> = (1..=last)
        .filter(|&k| {
            let m = magnitudes[k];
            let above_left = k == 1 || m > magnitudes[k - 1];
            let not_below_right = k == last || m >= magnitudes[k + 1];
            m > floor && above_left && not_below_right
        })
        .collect();
    found.sort_by(|&a, &b| magnitudes[b].total_cmp(&magnitudes[a]).then(a.cmp(&b)));
    found.truncate(count);
    found
}

#[cfg(test)]
mod tests {
    use super::super::testing::{check_fixtures, field, number};
    use super::super::{prepare as prepare_call, result_map, uint};
    use super::*;

    #[test]
    fn matches_numpy_fixtures() {
        check_fixtures("spectrum", 1e-9);
    }

    #[test]
    fn arguments_are_validated_at_intake() {
        let values = (
            "values",
            Value::Array(vec![Value::Float(1.0), Value::Float(2.0)]),
        );
        for bad in [
            vec![values.clone()],
            vec![values.clone(), ("sample_rate_hz", Value::Float(0.0))],
            vec![values.clone(), ("sample_rate_hz", Value::Float(-5.0))],
            vec![
                values.clone(),
                ("sample_rate_hz", uint(10)),
                ("peaks", uint(0)),
            ],
            vec![
                values.clone(),
                ("sample_rate_hz", uint(10)),
                ("peaks", uint(MAX_PEAKS as usize + 1)),
            ],
        ] {
            assert!(
                prepare_call("spectrum", &result_map(bad.clone()), 10).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn telemetry_rate_comes_from_the_median_interval() {
        let telemetry = result_map(vec![
            ("metric", Value::Text("v".into())),
            ("window_s", uint(60)),
        ]);
        let call = prepare_call("spectrum", &telemetry, 1 << 12).expect("valid");
        // 7 Hz sampled at 50 Hz (20 ms), with one reading missed.
        let mut ts: Vec<u64> = (0..200).map(|i| 1_700_000_000_000 + 20 * i).collect();
        ts.remove(57);
        let values = ts
            .iter()
            .map(|&t| (2.0 * std::f64::consts::PI * 7.0 * (t as f64 / 1000.0)).sin())
            .collect();
        let result = call
            .prepared
            .run(&Series {
                values,
                ts: Some(ts),
            })
            .expect("runs");
        let Value::Array(peaks) = field(&result, "peaks") else {
            panic!("peaks")
        };
        let freq = number(&peaks[0], "freq_hz");
        assert!(
            (freq - 7.0).abs() < 50.0 / 199.0,
            "strongest peak at {freq} Hz"
        );
        let still = Series {
            values: vec![1.0, 2.0],
            ts: Some(vec![3, 3]),
        };
        assert!(matches!(
            call.prepared.run(&still),
            Err(OpError::BadArgs(_))
        ));
    }
}
