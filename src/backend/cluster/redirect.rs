//! MOVED and ASK: where a cluster node says a slot is served now.

use crate::transport::connection::Reply;

pub(super) enum Redirect {
    Moved { slot: u16, location: String },
    Ask { location: String },
}

/// `MOVED 3999 127.0.0.1:6381` / `ASK 3999 127.0.0.1:6381`.
pub(super) fn redirect(reply: &Reply) -> Option<Redirect> {
    let Reply::Error(line) = reply else {
        return None;
    };
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split_whitespace();
    let code = words.next()?;
    let slot = words.next()?.parse().ok()?;
    let location = words.next()?.to_string();
    match code {
        "MOVED" => Some(Redirect::Moved { slot, location }),
        "ASK" => Some(Redirect::Ask { location }),
        _ => None,
    }
}
