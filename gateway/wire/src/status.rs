//! Reply status codes and request states, as the contract names them.

/// A reply's status code (the contract's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// 200: done, `result` holds the answer.
    Ok,
    /// 202: accepted, or still queued or running.
    Accepted,
    /// 400: not CBOR, not a map, or bad arguments.
    BadRequest,
    /// 403: Response Topic outside the device's namespace, or not authorized.
    Forbidden,
    /// 404: unknown op, or unknown request for `status`/`cancel`.
    NotFound,
    /// 409: `cancel` of a finished request.
    Conflict,
    /// 410: final reply of a cancelled request.
    Gone,
    /// 413: payload or series too large.
    TooLarge,
    /// 429: the device has too many pending requests.
    TooMany,
    /// 500: the op failed while running.
    Failed,
    /// 503: queue full, or draining.
    Unavailable,
    /// 504: the deadline passed first.
    Timeout,
}

impl Status {
    /// The numeric code.
    pub fn code(self) -> u16 {
        match self {
            Status::Ok => 200,
            Status::Accepted => 202,
            Status::BadRequest => 400,
            Status::Forbidden => 403,
            Status::NotFound => 404,
            Status::Conflict => 409,
            Status::Gone => 410,
            Status::TooLarge => 413,
            Status::TooMany => 429,
            Status::Failed => 500,
            Status::Unavailable => 503,
            Status::Timeout => 504,
        }
    }

    /// Parses a numeric code.
    pub fn from_code(code: u64) -> Option<Status> {
        Some(match code {
            200 => Status::Ok,
            202 => Status::Accepted,
            400 => Status::BadRequest,
            403 => Status::Forbidden,
            404 => Status::NotFound,
            409 => Status::Conflict,
            410 => Status::Gone,
            413 => Status::TooLarge,
            429 => Status::TooMany,
            500 => Status::Failed,
            503 => Status::Unavailable,
            504 => Status::Timeout,
            _ => return None,
        })
    }

    /// Whether this is an error (4xx or 5xx).
    pub fn is_error(self) -> bool {
        self.code() >= 400
    }
}

/// A request's state, as reported in replies and status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Stored, `202` sent.
    Accepted,
    /// Waiting for a worker.
    Queued,
    /// A worker is running it.
    Running,
    /// Finished with a result.
    Done,
    /// The op failed.
    Failed,
    /// Its deadline passed.
    Expired,
    /// The device cancelled it.
    Cancelled,
    /// Refused at intake (never stored).
    Rejected,
}

impl State {
    /// The contract's name.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Accepted => "accepted",
            State::Queued => "queued",
            State::Running => "running",
            State::Done => "done",
            State::Failed => "failed",
            State::Expired => "expired",
            State::Cancelled => "cancelled",
            State::Rejected => "rejected",
        }
    }

    /// Parses a contract name.
    pub fn parse(name: &str) -> Option<State> {
        Some(match name {
            "accepted" => State::Accepted,
            "queued" => State::Queued,
            "running" => State::Running,
            "done" => State::Done,
            "failed" => State::Failed,
            "expired" => State::Expired,
            "cancelled" => State::Cancelled,
            "rejected" => State::Rejected,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for code in [200, 202, 400, 403, 404, 409, 410, 413, 429, 500, 503, 504] {
            let status = Status::from_code(code).expect("known code");
            assert_eq!(u64::from(status.code()), code);
        }
        assert!(Status::from_code(201).is_none());
    }

    #[test]
    fn states_round_trip() {
        for name in [
            "accepted",
            "queued",
            "running",
            "done",
            "failed",
            "expired",
            "cancelled",
            "rejected",
        ] {
            assert_eq!(State::parse(name).map(State::as_str), Some(name));
        }
    }
}
