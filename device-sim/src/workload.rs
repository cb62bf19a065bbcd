//! What devices send: the op mix, random arguments for each op, and correlation data.
//!
//! Feeds [`crate::tracker`] (which remembers what each request expects) and the device loops
//! (which publish the encoded payload). Payloads are encoded with the gateway's own
//! [`wire::envelope::encode_value`], so both sides speak one CBOR definition.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use ciborium::Value;
use rand::Rng;
use wire::envelope::encode_value;

/// The ops device-sim knows how to ask for and check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// Verified exactly against a local recomputation.
    Stats,
    /// Checked structurally: `bins` counts summing to the series length, `bins + 1` edges.
    Histogram,
    /// Checked structurally: `indices`, `scores`, `count`.
    Anomaly,
    /// Checked structurally: `slope_per_s`, `intercept`, `r2`, `forecast`.
    Trend,
    /// Checked structurally: a `peaks` list.
    Spectrum,
    /// An operator's ONNX model (`--infer-model`): checked structurally (the model that answered,
    /// its file hash, every output's data matching its shape, all finite).
    Infer,
}

impl Op {
    /// The op's name, the last level of `devices/{id}/req/{op}`.
    pub fn name(self) -> &'static str {
        match self {
            Op::Stats => "stats",
            Op::Histogram => "histogram",
            Op::Anomaly => "anomaly",
            Op::Trend => "trend",
            Op::Spectrum => "spectrum",
            Op::Infer => "infer",
        }
    }

    /// Parses an op name.
    pub fn parse(name: &str) -> Option<Op> {
        [
            Op::Stats,
            Op::Histogram,
            Op::Anomaly,
            Op::Trend,
            Op::Spectrum,
            Op::Infer,
        ]
        .into_iter()
        .find(|op| op.name() == name)
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A weighted op mix, parsed from `stats=8,histogram=1`.
#[derive(Debug, Clone, PartialEq)]
pub struct Mix {
    weights: Vec<(Op, u32)>,
    total: u32,
}

impl Mix {
    /// Only `stats`.
    pub fn stats_only() -> Mix {
        Mix {
            weights: vec![(Op::Stats, 1)],
            total: 1,
        }
    }

    /// Picks an op with probability proportional to its weight.
    pub fn pick(&self, rng: &mut impl Rng) -> Op {
        let mut ticket = rng.gen_range(0..self.total);
        for &(op, weight) in &self.weights {
            if ticket < weight {
                return op;
            }
            ticket -= weight;
        }
        self.weights.last().map_or(Op::Stats, |&(op, _)| op)
    }
}

impl FromStr for Mix {
    type Err = String;

    fn from_str(spec: &str) -> Result<Mix, String> {
        let mut weights = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part.split_once('=').unwrap_or((part, "1"));
            let op = Op::parse(name.trim()).ok_or_else(|| {
                format!("unknown op {name:?} (known: stats, histogram, anomaly, trend, spectrum, infer)")
            })?;
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("weight of {name} is not a whole number: {weight:?}"))?;
            if weight > 0 {
                weights.push((op, weight));
            }
        }
        let total = weights.iter().map(|&(_, w)| w).sum::<u32>();
        if total == 0 {
            return Err("the mix needs at least one op with a weight above 0".into());
        }
        Ok(Mix { weights, total })
    }
}

/// What a request's final reply must contain, kept until the reply arrives.
#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    /// `stats` over these values: recomputed and compared.
    Stats(Vec<f64>),
    /// `histogram` with `bins` bins over `n` values.
    Histogram {
        /// Series length.
        n: usize,
        /// Requested bins.
        bins: usize,
    },
    /// `anomaly` over `n` values.
    Anomaly {
        /// Series length.
        n: usize,
    },
    /// `trend`.
    Trend,
    /// `spectrum` asking for up to `peaks` peaks.
    Spectrum {
        /// Requested peaks.
        peaks: usize,
    },
    /// `infer` of this model over `rows` rows.
    Infer {
        /// The model asked for.
        model: String,
        /// Rows sent (the batch dimension).
        rows: usize,
    },
}

/// The model `infer` requests ask for: a name and the width of its `[N, features]` input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InferTarget {
    /// `[models.NAME]` on the gateway.
    pub model: String,
    /// Features per row.
    pub features: usize,
}

impl Default for InferTarget {
    /// The MLP anomaly scorer of `tests/fixtures/models` (8 features).
    fn default() -> InferTarget {
        InferTarget {
            model: "mlp".into(),
            features: 8,
        }
    }
}

/// One request, ready to publish.
#[derive(Debug, Clone)]
pub struct Request {
    /// The op, naming the topic.
    pub op: Op,
    /// The CBOR-encoded argument map.
    pub payload: Vec<u8>,
    /// What the final reply must hold.
    pub expect: Expect,
}

fn text(s: &str) -> Value {
    Value::Text(s.to_owned())
}

fn floats(values: &[f64]) -> Value {
    Value::Array(values.iter().map(|&v| Value::Float(v)).collect())
}

/// An `infer` request: 1 to 4 rows of `target.features` random values.
fn build_infer(target: &InferTarget, rng: &mut impl Rng) -> Request {
    let rows = rng.gen_range(1..=4);
    let input = Value::Array(
        (0..rows)
            .map(|_| {
                let row: Vec<f64> = (0..target.features.max(1))
                    .map(|_| rng.gen_range(-3.0..3.0))
                    .collect();
                floats(&row)
            })
            .collect(),
    );
    let args = vec![(text("model"), text(&target.model)), (text("input"), input)];
    Request {
        op: Op::Infer,
        payload: encode_value(&Value::Map(args)),
        expect: Expect::Infer {
            model: target.model.clone(),
            rows,
        },
    }
}

/// Builds a request for `op` over `len` random values (at least 2); `infer` asks `target`.
pub fn build(op: Op, len: usize, target: &InferTarget, rng: &mut impl Rng) -> Request {
    if op == Op::Infer {
        return build_infer(target, rng);
    }
    let len = len.max(2);
    let values: Vec<f64> = match op {
        // A sine plus noise, so there is a peak to find.
        Op::Spectrum => (0..len)
            .map(|i| (i as f64 * 0.7).sin() * 10.0 + rng.gen_range(-1.0..1.0))
            .collect(),
        _ => (0..len).map(|_| rng.gen_range(-50.0..150.0)).collect(),
    };
    let mut args = vec![(text("values"), floats(&values))];
    let expect = match op {
        Op::Stats => Expect::Stats(values),
        Op::Histogram => {
            args.push((text("bins"), Value::Integer(10.into())));
            Expect::Histogram { n: len, bins: 10 }
        }
        Op::Anomaly => Expect::Anomaly { n: len },
        Op::Trend => {
            let base: u64 = 1_700_000_000_000;
            let ts = (0..len as u64)
                .map(|i| Value::Integer((base + i * 1000).into()))
                .collect();
            args.push((text("ts"), Value::Array(ts)));
            Expect::Trend
        }
        Op::Spectrum => {
            args.push((text("sample_rate_hz"), Value::Float(10.0)));
            args.push((text("peaks"), Value::Integer(3.into())));
            Expect::Spectrum { peaks: 3 }
        }
        Op::Infer => unreachable!("built above"),
    };
    Request {
        op,
        payload: encode_value(&Value::Map(args)),
        expect,
    }
}

/// A telemetry upload: `{"ts": now ms, "temp": x, "battery": y}`.
pub fn telemetry(now_ms: u64, rng: &mut impl Rng) -> Vec<u8> {
    encode_value(&Value::Map(vec![
        (text("ts"), Value::Integer(now_ms.into())),
        (text("temp"), Value::Float(rng.gen_range(15.0..30.0))),
        (text("battery"), Value::Float(rng.gen_range(3.0..4.2))),
    ]))
}

/// A presence announcement: awake for `listen_ms`, or asleep.
pub fn presence(listen_ms: Option<u64>) -> Vec<u8> {
    let map = match listen_ms {
        Some(ms) => vec![
            (text("state"), text("awake")),
            (text("listen_ms"), Value::Integer(ms.into())),
        ],
        None => vec![(text("state"), text("asleep"))],
    };
    encode_value(&Value::Map(map))
}

/// Correlation data: 8 bytes of run nonce then 8 bytes of per-device sequence number, so a reply
/// left over from another run (same device id, other nonce) is told apart from a wrong one.
pub fn correlation(nonce: u64, seq: u64) -> Bytes {
    let mut bytes = Vec::with_capacity(16);
    bytes.extend_from_slice(&nonce.to_be_bytes());
    bytes.extend_from_slice(&seq.to_be_bytes());
    Bytes::from(bytes)
}

/// Splits correlation data back into (nonce, sequence number).
pub fn parse_correlation(corr: &[u8]) -> Option<(u64, u64)> {
    let nonce = u64::from_be_bytes(corr.get(..8)?.try_into().ok()?);
    let seq = u64::from_be_bytes(corr.get(8..)?.try_into().ok()?);
    Some((nonce, seq))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use wire::envelope::{decode_value, map_get};

    #[test]
    fn mix_parses_and_picks_by_weight() {
        let mix: Mix = "stats=3, histogram=1,trend=0".parse().expect("valid");
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let stats = (0..4000)
            .filter(|_| mix.pick(&mut rng) == Op::Stats)
            .count();
        assert!((2800..3200).contains(&stats), "{stats}");
        assert!("bogus=1".parse::<Mix>().is_err());
        assert!("stats=0".parse::<Mix>().is_err());
        assert!("stats=x".parse::<Mix>().is_err());
        assert_eq!("stats".parse::<Mix>(), Ok(Mix::stats_only()));
    }

    #[test]
    fn stats_request_carries_its_values() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let request = build(Op::Stats, 16, &InferTarget::default(), &mut rng);
        let Value::Map(map) = decode_value(&request.payload).expect("cbor") else {
            panic!("not a map")
        };
        let Some(Value::Array(values)) = map_get(&map, "values") else {
            panic!("no values")
        };
        let Expect::Stats(expected) = request.expect else {
            panic!("wrong expectation")
        };
        let sent: Vec<f64> = values.iter().filter_map(|v| v.as_float()).collect();
        assert_eq!(sent, expected);
    }

    #[test]
    fn correlation_round_trips() {
        let corr = correlation(0xdead_beef, 42);
        assert_eq!(parse_correlation(&corr), Some((0xdead_beef, 42)));
        assert_eq!(parse_correlation(b"short"), None);
    }
}
