//! Plans specialised per batch size: a model's free dimensions (`"N"`) cost tract dearly at run
//! time (measured ~4× on the MLP: with a symbolic size it cannot specialise its matrix products,
//! docs/BENCHMARKS.md), so once a size has been seen [`BUILD_AFTER`] times a plan with the
//! free dimensions bound to it is optimised in the background and used from then on. Its matrix
//! products' kernel is chosen by trial on this machine ([`super::kernels`]).
//!
//! Fed by [`super::Model::run`] (the free-dimension sizes of each run's inputs) and by
//! [`super::load`], which hands over the decluttered graph and its free plan. Feeds the run with
//! the plan to use. Guarantees: a run never waits for an optimisation (until its plan is ready a
//! size runs on the free plan, so deadlines stay those of the run alone); optimisation happens on
//! one background thread (`roost-model-plans`), never on a worker or an async task; at most
//! [`KEEP`] specialised plans per model (least recently used dropped); a size whose
//! specialisation fails (tract error or panic) keeps the free plan for good.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tract_onnx::prelude::{Symbol, TDim, TValue, TypedModel, TypedSimplePlan};

/// Runs of one size before its specialised plan is built (one-off sizes never cost an
/// optimisation).
pub const BUILD_AFTER: u32 = 2;
/// Specialised plans kept per model; each holds its own copy of the packed weights.
pub const KEEP: usize = 4;
/// Sizes remembered per model while counting sightings; past it the counts start over.
const SEEN_CAP: usize = 256;
/// Builds waiting for the background thread; past it a build is skipped (asked again later).
const QUEUE: usize = 16;

/// Where a free dimension's size is read: the input and its axis.
#[derive(Debug, Clone)]
struct Slot {
    symbol: Symbol,
    input: usize,
    axis: usize,
}

enum Entry {
    Seen(u32),
    Building,
    Ready {
        plan: Arc<TypedSimplePlan>,
        used: u64,
    },
    Failed,
}

/// One model's specialised plans.
pub(super) struct Plans {
    name: String,
    decluttered: TypedModel,
    free: Arc<TypedSimplePlan>,
    /// Each free dimension's first occurrence; empty when the model cannot be specialised.
    slots: Vec<Slot>,
    /// Every occurrence of a free dimension (input, axis, slot): they must agree.
    occurrences: Vec<(usize, usize, usize)>,
    entries: Mutex<HashMap<Vec<usize>, Entry>>,
    changed: Condvar,
    tick: AtomicU64,
}

impl Plans {
    /// Plans for `decluttered` (typed, decluttered, free dimensions still symbols), whose
    /// optimised free plan is `free`. Specialisation is off when an input's dimension is an
    /// expression rather than a plain symbol.
    pub(super) fn new(name: &str, decluttered: TypedModel, free: Arc<TypedSimplePlan>) -> Plans {
        let mut slots: Vec<Slot> = Vec::new();
        let mut occurrences = Vec::new();
        let mut specialisable = true;
        for (input, outlet) in decluttered.inputs.iter().enumerate() {
            let Ok(fact) = decluttered.outlet_fact(*outlet) else {
                specialisable = false;
                continue;
            };
            for (axis, dim) in fact.shape.iter().enumerate() {
                match dim {
                    TDim::Val(_) => {}
                    TDim::Sym(symbol) => {
                        let ix = match slots.iter().position(|s| s.symbol == *symbol) {
                            Some(ix) => ix,
                            None => {
                                slots.push(Slot {
                                    symbol: symbol.clone(),
                                    input,
                                    axis,
                                });
                                slots.len() - 1
                            }
                        };
                        occurrences.push((input, axis, ix));
                    }
                    _ => specialisable = false,
                }
            }
        }
        if !specialisable {
            slots.clear();
        }
        Plans {
            name: name.to_owned(),
            decluttered,
            free,
            slots,
            occurrences,
            entries: Mutex::new(HashMap::new()),
            changed: Condvar::new(),
            tick: AtomicU64::new(0),
        }
    }

    /// The plan with no dimension bound: what every size can run.
    pub(super) fn free(&self) -> &Arc<TypedSimplePlan> {
        &self.free
    }

    /// The free dimensions' sizes in `inputs`, `None` when there are none, the model cannot be
    /// specialised or the inputs disagree (the free plan then reports the mistake).
    fn key(&self, inputs: &[TValue]) -> Option<Vec<usize>> {
        if self.slots.is_empty() {
            return None;
        }
        let mut key = vec![0; self.slots.len()];
        for (slot, size) in self.slots.iter().zip(key.iter_mut()) {
            *size = *inputs.get(slot.input)?.shape().get(slot.axis)?;
        }
        for &(input, axis, ix) in &self.occurrences {
            if inputs.get(input)?.shape().get(axis) != Some(&key[ix]) {
                return None;
            }
        }
        Some(key)
    }

    /// The plan for `inputs`: their specialised plan when it is ready, else the free plan (a
    /// sighting that may queue the specialised plan's build).
    pub(super) fn for_inputs(self: &Arc<Self>, inputs: &[TValue]) -> Arc<TypedSimplePlan> {
        let Some(key) = self.key(inputs) else {
            return self.free.clone();
        };
        let mut entries = self.lock();
        let tick = self.tick.fetch_add(1, Ordering::Relaxed);
        match entries.get_mut(&key) {
            Some(Entry::Ready { plan, used }) => {
                *used = tick;
                return plan.clone();
            }
            Some(Entry::Building | Entry::Failed) => return self.free.clone(),
            Some(Entry::Seen(count)) => *count += 1,
            None => {
                if entries.len() >= SEEN_CAP {
                    entries.retain(|_, e| !matches!(e, Entry::Seen(_)));
                }
                entries.insert(key.clone(), Entry::Seen(1));
            }
        }
        if matches!(entries.get(&key), Some(Entry::Seen(n)) if *n >= BUILD_AFTER)
            && builder()
                .try_send(Job {
                    plans: self.clone(),
                    key: key.clone(),
                })
                .is_ok()
        {
            entries.insert(key, Entry::Building);
        }
        self.free.clone()
    }

    /// Builds the plan for the sizes of `inputs` now, on this thread (benchmarks, tests), unless
    /// it exists. False when the inputs have no free dimension to bind or the build failed.
    pub fn specialise_now(&self, inputs: &[TValue]) -> bool {
        match self.key(inputs) {
            Some(key) => {
                if !matches!(self.lock().get(&key), Some(Entry::Ready { .. })) {
                    self.build(key.clone());
                }
                matches!(self.lock().get(&key), Some(Entry::Ready { .. }))
            }
            None => false,
        }
    }

    /// Waits up to `limit` for the specialised plan of `inputs`' sizes to be ready (or failed):
    /// true when it is ready.
    pub fn wait_specialised(&self, inputs: &[TValue], limit: Duration) -> bool {
        let Some(key) = self.key(inputs) else {
            return false;
        };
        let until = Instant::now() + limit;
        let mut entries = self.lock();
        loop {
            match entries.get(&key) {
                Some(Entry::Ready { .. }) => return true,
                Some(Entry::Building) => {}
                _ => return false,
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            entries = match self.changed.wait_timeout(entries, left) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }

    /// How many specialised plans are ready.
    pub fn ready(&self) -> usize {
        self.lock()
            .values()
            .filter(|e| matches!(e, Entry::Ready { .. }))
            .count()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Vec<usize>, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Binds the free dimensions to `key`, optimises, and files the plan (or the failure).
    fn build(&self, key: Vec<usize>) {
        let started = Instant::now();
        let values: HashMap<Symbol, TDim> = self
            .slots
            .iter()
            .zip(&key)
            .map(|(slot, size)| (slot.symbol.clone(), TDim::from(*size)))
            .collect();
        let built = catch_unwind(AssertUnwindSafe(|| {
            self.decluttered
                .set_symbols(&values)
                .and_then(|bound| super::kernels::optimise(&bound))
        }));
        let entry = match built {
            Ok(Ok(tuned)) => {
                let ms = started.elapsed().as_millis() as u64;
                tracing::debug!(
                    model = %self.name, sizes = ?key, ms,
                    kernel = tuned.kernel.unwrap_or("tract's choice"),
                    tract_us = format!("{:.1}", tuned.tract_us),
                    kept_us = format!("{:.1}", tuned.kept_us),
                    "specialised plan ready"
                );
                Entry::Ready {
                    plan: tuned.plan,
                    used: self.tick.fetch_add(1, Ordering::Relaxed),
                }
            }
            Ok(Err(error)) => {
                let error = super::load::one_line(&error);
                tracing::info!(
                    model = %self.name, sizes = ?key, %error,
                    "cannot specialise; the free plan serves this size"
                );
                Entry::Failed
            }
            Err(_) => {
                tracing::info!(
                    model = %self.name, sizes = ?key,
                    "specialising panicked; the free plan serves this size"
                );
                Entry::Failed
            }
        };
        let mut entries = self.lock();
        entries.insert(key, entry);
        let ready: Vec<(u64, Vec<usize>)> = entries
            .iter()
            .filter_map(|(k, e)| match e {
                Entry::Ready { used, .. } => Some((*used, k.clone())),
                _ => None,
            })
            .collect();
        if ready.len() > KEEP {
            if let Some((_, oldest)) = ready.into_iter().min_by_key(|(used, _)| *used) {
                entries.remove(&oldest);
            }
        }
        drop(entries);
        self.changed.notify_all();
    }
}

struct Job {
    plans: Arc<Plans>,
    key: Vec<usize>,
}

/// The background thread that optimises specialised plans, started on first use.
fn builder() -> &'static SyncSender<Job> {
    static BUILDER: OnceLock<SyncSender<Job>> = OnceLock::new();
    BUILDER.get_or_init(|| {
        let (tx, rx) = sync_channel::<Job>(QUEUE);
        let spawned = std::thread::Builder::new()
            .name("roost-model-plans".into())
            .spawn(move || {
                for job in rx {
                    job.plans.build(job.key);
                }
            });
        if let Err(error) = spawned {
            // Without the thread every send fails once the queue is full: sizes keep the free
            // plan, which is slower but right.
            tracing::warn!(%error, "cannot start the model plan builder; free plans only");
        }
        tx
    })
}
