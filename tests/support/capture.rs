//! [`Capture`]: a tracing subscriber that keeps every event (and span field) as one line of
//! text, `"LEVEL target: name=value ..."`, for tests that assert what is logged.
//!
//! Install it for one test with `tracing::subscriber::set_default(capture.clone())` (the
//! guard must live as long as the test logs; on a current-thread runtime it covers every
//! task the test spawns).
//!
//! Many tests share one process, each with its own thread-local capture, and tracing caches
//! per call site whether anyone listens (and a global maximum level) from the subscribers
//! alive at that moment. A call site first reached while no capture was alive could stay
//! disabled for a capture created later, and a test would miss its event. So creating a
//! `Capture` first installs a global subscriber that listens to everything and keeps
//! nothing: every call site stays enabled, and the thread's capture decides.

use std::fmt;
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::metadata::LevelFilter;
use tracing::span::{Attributes, Id, Record};
use tracing::subscriber::Interest;
use tracing::{Event, Metadata, Subscriber};

/// A subscriber that keeps every event (and span field) as one line of text; cheap to
/// clone, every clone sees the same lines.
#[derive(Clone)]
pub struct Capture(Arc<Mutex<Vec<String>>>);

impl Default for Capture {
    fn default() -> Self {
        static BASELINE: std::sync::Once = std::sync::Once::new();
        BASELINE.call_once(|| {
            // Fails only if a global subscriber is set already, which then decides.
            let _ = tracing::subscriber::set_global_default(Baseline);
        });
        Self(Arc::default())
    }
}

/// The global subscriber under every [`Capture`]: interested in everything, keeps nothing.
struct Baseline;

impl Subscriber for Baseline {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
        Interest::always()
    }
    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::TRACE)
    }
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, _: &Event<'_>) {}
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

struct Line(String);

impl Visit for Line {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push_str(&format!(" {}={}", field.name(), value));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.push_str(&format!(" {}={:?}", field.name(), value));
    }
}

impl Capture {
    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    /// Every line so far, leaving none.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }

    fn push(&self, line: String) {
        self.0.lock().unwrap().push(line);
    }
}

impl Subscriber for Capture {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
        Interest::always()
    }
    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::TRACE)
    }
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let mut line = Line(format!("span {}:", span.metadata().name()));
        span.record(&mut line);
        self.push(line.0);
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, values: &Record<'_>) {
        let mut line = Line("span record:".to_owned());
        values.record(&mut line);
        self.push(line.0);
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let meta = event.metadata();
        let mut line = Line(format!("{} {}:", meta.level(), meta.target()));
        event.record(&mut line);
        self.push(line.0);
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}
