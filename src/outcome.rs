//! Every way a request can end, in one enum: its HTTP status, the JSON `error`
//! code, the metric label and the human message come from here, so they cannot
//! drift apart.

use http::StatusCode;
use strum::IntoEnumIterator;

/// How a request ended. Its code is its name in snake case; its index, its
/// position in the list.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    strum::EnumIter,
    strum::IntoStaticStr,
    strum::EnumDiscriminants,
)]
#[strum(serialize_all = "snake_case")]
pub enum Outcome {
    /// A verified delivery went upstream (the upstream's status is returned).
    Forwarded,
    /// A request on a path under no route went upstream.
    Passthrough,
    MissingSignature,
    MalformedSignature,
    InvalidSignature,
    TimestampOutOfTolerance,
    BodyTooLarge,
    BodyTimeout,
    MethodNotAllowed,
    InvalidEvent,
    Ignored,
    Duplicate,
    /// Another request holds the event's in-flight mark; the client may retry
    /// after `retry_after` seconds (at least 1).
    DeliveryInProgress {
        retry_after: u64,
    },
    UpstreamUnavailable,
    UpstreamTimeout,
    /// The Redis store cannot answer and `on_store_error = "reject"`.
    ReplayStoreUnavailable,
    /// The body's next chunk would not fit `[server] max_buffered` or the
    /// client's `max_buffered_per_client` (the rest of it is not read).
    Overloaded,
    /// Ambiguous framing (`docs/behaviour.md` § Framing): refused, connection closed.
    MalformedRequest,
    /// A path that cannot be percent-decoded.
    InvalidPath,
    /// `unmatched = "deny"`.
    NotFound,
    /// The client went away or failed mid-request.
    ClientError,
    /// The route has `allow_from` and the client address is not in it (or
    /// cannot be told); decided before any other check on the route.
    SourceNotAllowed,
    /// The delivery is kept in the delivery spool (`spool = "on_failure"` or
    /// `"always"`) and will reach the app from there: 202.
    Spooled,
    /// A header the route requires (`require_headers`) is missing, repeated
    /// or has another value.
    InvalidHeaderToken,
    /// The route requires a bearer token (`[route.oauth]`) and none came.
    MissingToken,
    /// The bearer token failed a check (its form, signature, time, issuer,
    /// audience or scopes).
    InvalidToken,
}

impl Outcome {
    /// The label used in logs, metrics and the JSON `error` field.
    pub fn code(self) -> &'static str {
        self.into()
    }

    /// The status persona-guard answers with itself (`None`: the upstream's).
    pub fn status(self) -> Option<StatusCode> {
        Some(match self {
            Outcome::Forwarded | Outcome::Passthrough => return None,
            Outcome::Ignored | Outcome::Duplicate => StatusCode::OK,
            Outcome::Spooled => StatusCode::ACCEPTED,
            Outcome::MissingSignature
            | Outcome::MalformedSignature
            | Outcome::InvalidSignature
            | Outcome::TimestampOutOfTolerance
            | Outcome::InvalidHeaderToken
            | Outcome::MissingToken
            | Outcome::InvalidToken => StatusCode::UNAUTHORIZED,
            Outcome::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Outcome::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Outcome::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Outcome::InvalidEvent | Outcome::MalformedRequest | Outcome::InvalidPath => {
                StatusCode::BAD_REQUEST
            }
            Outcome::DeliveryInProgress { .. } => StatusCode::CONFLICT,
            Outcome::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            Outcome::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Outcome::ReplayStoreUnavailable | Outcome::Overloaded => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Outcome::NotFound => StatusCode::NOT_FOUND,
            Outcome::ClientError => StatusCode::BAD_REQUEST,
            Outcome::SourceNotAllowed => StatusCode::FORBIDDEN,
        })
    }

    /// One sentence for a human. Never includes request data.
    pub fn message(self) -> &'static str {
        match self {
            Outcome::Forwarded => "The delivery was verified and forwarded.",
            Outcome::Passthrough => "The request was forwarded.",
            Outcome::MissingSignature => "The Persona-Signature header is missing.",
            Outcome::MalformedSignature => "The Persona-Signature header cannot be parsed.",
            Outcome::InvalidSignature => "No signature matches the body with a configured secret.",
            Outcome::TimestampOutOfTolerance => {
                "The signature timestamp is too far from the current time."
            }
            Outcome::BodyTooLarge => "The request body is larger than this route accepts.",
            Outcome::BodyTimeout => "The request body did not arrive in time.",
            Outcome::MethodNotAllowed => "Webhook routes accept POST only.",
            Outcome::InvalidEvent => {
                "The body is not a Persona event with data.id and data.attributes.name."
            }
            Outcome::Ignored => "The event type is not forwarded on this route.",
            Outcome::Duplicate => "This event was already delivered.",
            Outcome::DeliveryInProgress { .. } => {
                "This event is being delivered by another request; retry later."
            }
            Outcome::UpstreamUnavailable => "The application cannot be reached.",
            Outcome::UpstreamTimeout => "The application did not answer in time.",
            Outcome::ReplayStoreUnavailable => "The replay store cannot be reached; retry later.",
            Outcome::Overloaded => "The proxy holds as many request bodies as it may; retry later.",
            Outcome::MalformedRequest => "The request framing is ambiguous and was refused.",
            Outcome::InvalidPath => "The request path cannot be decoded.",
            Outcome::NotFound => "No route matches this path.",
            Outcome::ClientError => "The request could not be read.",
            Outcome::SourceNotAllowed => "This route does not accept requests from this address.",
            Outcome::Spooled => {
                "The delivery is kept durably and will be delivered to the application."
            }
            Outcome::InvalidHeaderToken => "A header this route requires is missing or wrong.",
            Outcome::MissingToken => "This route requires a bearer token.",
            Outcome::InvalidToken => "The bearer token is not valid for this route.",
        }
    }

    /// Its position in [`Outcome::all`] (a metric handle's index).
    pub fn index(self) -> usize {
        OutcomeDiscriminants::from(self) as usize
    }

    /// Every outcome (`DeliveryInProgress` with `retry_after` 0), for
    /// pre-registering metric labels.
    pub fn all() -> impl Iterator<Item = Outcome> {
        Outcome::iter()
    }

    /// Whether answering this way closes the connection: the outcomes decided
    /// before the request body was read (the unread rest cannot be told from
    /// a next request), and broken framing.
    pub fn closes(self) -> bool {
        matches!(
            self,
            Outcome::MethodNotAllowed
                | Outcome::MissingSignature
                | Outcome::MalformedSignature
                | Outcome::BodyTooLarge
                | Outcome::BodyTimeout
                | Outcome::Overloaded
                | Outcome::MalformedRequest
                | Outcome::InvalidPath
                | Outcome::NotFound
                | Outcome::ClientError
                | Outcome::SourceNotAllowed
                | Outcome::InvalidHeaderToken
                | Outcome::MissingToken
                | Outcome::InvalidToken
        )
    }

    /// The `Retry-After` seconds sent with this answer.
    pub fn retry_after(self) -> Option<u64> {
        match self {
            Outcome::DeliveryInProgress { retry_after } => Some(retry_after.max(1)),
            // Bodies come and go within about a request's time.
            Outcome::Overloaded => Some(1),
            _ => None,
        }
    }

    /// Whether a request under no route can end this way.
    pub fn applies_off_route(self) -> bool {
        matches!(
            self,
            Outcome::Passthrough
                | Outcome::MalformedRequest
                | Outcome::InvalidPath
                | Outcome::NotFound
                | Outcome::UpstreamUnavailable
                | Outcome::UpstreamTimeout
                | Outcome::ClientError
        )
    }

    /// The body persona-guard answers with.
    pub fn body(self) -> String {
        match self {
            Outcome::Ignored => r#"{"status":"ignored"}"#.to_string(),
            Outcome::Duplicate => r#"{"status":"duplicate"}"#.to_string(),
            Outcome::Spooled => r#"{"status":"spooled"}"#.to_string(),
            _ => serde_json::json!({ "error": self.code(), "message": self.message() }).to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_are_json_with_code_and_message() {
        for o in Outcome::all() {
            let v: serde_json::Value = serde_json::from_str(&o.body()).unwrap();
            match o {
                Outcome::Ignored => assert_eq!(v["status"], "ignored"),
                Outcome::Duplicate => assert_eq!(v["status"], "duplicate"),
                Outcome::Spooled => assert_eq!(v["status"], "spooled"),
                _ => {
                    assert_eq!(v["error"], o.code());
                    assert!(v["message"].as_str().unwrap().ends_with('.'));
                }
            }
        }
    }

    #[test]
    fn index_is_the_position_in_all() {
        for (i, o) in Outcome::all().enumerate() {
            assert_eq!(o.index(), i, "{}", o.code());
        }
    }

    #[test]
    fn retry_after_is_at_least_one_second() {
        assert_eq!(
            Outcome::DeliveryInProgress { retry_after: 0 }.retry_after(),
            Some(1)
        );
        assert_eq!(
            Outcome::DeliveryInProgress { retry_after: 7 }.retry_after(),
            Some(7)
        );
        assert_eq!(Outcome::Overloaded.retry_after(), Some(1));
        assert_eq!(Outcome::Duplicate.retry_after(), None);
    }

    #[test]
    fn a_refused_source_is_403_and_closes() {
        let o = Outcome::SourceNotAllowed;
        assert_eq!(o.status(), Some(StatusCode::FORBIDDEN));
        assert_eq!(o.code(), "source_not_allowed");
        assert!(o.closes());
        assert!(!o.applies_off_route());
    }

    #[test]
    fn codes_are_unique() {
        let mut codes: Vec<_> = Outcome::all().map(|o| o.code()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), Outcome::all().count());
    }
}
