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
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use lambda_runtime::LambdaInvocation;
use lambda_runtime::tower::{Layer, Service};

use crate::SqsBatch;
use crate::error::HandlerError;

/// The payloads taken from invocations not yet handled, by request id.
#[derive(Clone, Default)]
pub struct RawPayloads {
    held: Arc<Mutex<HashMap<String, Bytes>>>,
}

impl RawPayloads {
    /// The batch of the invocation `request_id`, from its payload's bytes.
    pub fn take(&self, request_id: &str) -> Result<SqsBatch, HandlerError> {
        let bytes = self
            .held
            .lock()
            .ok()
            .and_then(|mut held| held.remove(request_id))
            .unwrap_or_default();
        Ok(SqsBatch::from_payload(bytes)?)
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
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut invocation: LambdaInvocation) -> Self::Future {
        let body = std::mem::replace(&mut invocation.body, Bytes::from_static(b"null"));
        if let Ok(mut held) = self.payloads.held.lock() {
            held.insert(invocation.context.request_id.clone(), body);
        }
        self.inner.call(invocation)
    }
}
