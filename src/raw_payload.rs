//! The Lambda function's payload as the bytes Lambda sent.
//!
//! lambda_runtime parses the whole payload into the handler's event type
//! before the handler runs. [`RawPayloads`], a layer of the runtime, takes
//! the bytes first (shared, not copied) and leaves the runtime a `null` to
//! parse; the handler takes them back by request id and reads each message
//! as it writes it ([`SqsBatch::from_payload`]), so no row waits for the
//! whole payload to be parsed (docs/performance.md, "The payload as Lambda
//! sent it").

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use lambda_runtime::LambdaInvocation;
use lambda_runtime::tower::{Layer, Service};
use tracing::warn;

use crate::error::HandlerError;
use crate::ingest::event::SqsBatch;

/// The payloads taken from invocations not yet handled, by request id.
#[derive(Clone, Default)]
pub struct RawPayloads {
    held: Arc<Mutex<HashMap<String, Bytes>>>,
}

impl RawPayloads {
    /// The batch of the invocation `request_id`, from its payload's bytes.
    /// Panics when the layer did not run for it (a wiring mistake in
    /// `main.rs`, not something a payload can cause).
    pub fn take(&self, request_id: &str) -> Result<SqsBatch, HandlerError> {
        let bytes = self
            .held
            .lock()
            .ok()
            .and_then(|mut held| held.remove(request_id))
            .expect(
                "RawPayloads wraps the runtime's handler, so every invocation's payload is held",
            );
        SqsBatch::from_payload(bytes).map_err(|e| {
            // The runtime logged its own refusal before; this is ours.
            warn!(error = %e, "invocation refused");
            HandlerError::from(e)
        })
    }

    fn forget(&self, request_id: &str) {
        if let Ok(mut held) = self.held.lock() {
            held.remove(request_id);
        }
    }
}

impl<S> Layer<S> for RawPayloads {
    type Service = TakePayload<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TakePayload {
            inner,
            payloads: self.clone(),
        }
    }
}

/// The service [`RawPayloads`] wraps the runtime's handler in.
pub struct TakePayload<S> {
    inner: S,
    payloads: RawPayloads,
}

impl<S: Service<LambdaInvocation>> Service<LambdaInvocation> for TakePayload<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = Handled<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut invocation: LambdaInvocation) -> Self::Future {
        let body = std::mem::replace(&mut invocation.body, Bytes::from_static(b"null"));
        let request_id = invocation.context.request_id.clone();
        if let Ok(mut held) = self.payloads.held.lock() {
            held.insert(request_id.clone(), body);
        }
        Handled {
            inner: Box::pin(self.inner.call(invocation)),
            payloads: self.payloads.clone(),
            request_id,
        }
    }
}

/// An invocation in the runtime's hands; when it ends (or is dropped), its
/// payload is let go even if the handler never took it (the runtime can
/// answer an invocation without calling the handler).
pub struct Handled<F> {
    inner: Pin<Box<F>>,
    payloads: RawPayloads,
    request_id: String,
}

impl<F: Future> Future for Handled<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<F> Drop for Handled<F> {
    fn drop(&mut self) {
        self.payloads.forget(&self.request_id);
    }
}
