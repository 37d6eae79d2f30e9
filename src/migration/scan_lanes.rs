//! Walking a store's keys for a backfill or verify: SCAN pages, and where the walk stands, as lanes walked side by side: one
//! per master of a Redis Cluster (each master is scanned, copied and compared in parallel, by a
//! bounded number of workers), one for a single server. A cluster lane uses the cluster SCAN
//! cursor of redis-rb (low 8 bits: the master; the rest: that master's own cursor), starting at
//! its master's index and ending where the cursor moves on to the next master.
//!
//! The position is saved as one string: a single lane's SCAN cursor as it is (what checkpoints
//! always held), or `lanes:` and each lane's cursor, `-` for a lane that is done. A plain cursor
//! met where there are several lanes (a checkpoint of the one-master-after-the-other walk) is
//! continued from: the masters before its index are done.

use crate::backend::store::Store;
use crate::error::{Error, Result, ServerErrorReply};
use crate::protocol::command::Command;
use crate::protocol::reply::Reply;
use crate::transport::cancel::CancelToken;

/// At most this many lanes are worked at once: each holds a page in memory and a connection to
/// each store.
pub const WORKERS: usize = 4;

const PREFIX: &[u8] = b"lanes:";
const DONE: &[u8] = b"-";

pub struct Lane<P> {
    index: usize,
    /// How many lanes there are.
    of: usize,
    /// Where the lane's next page starts.
    cursor: Vec<u8>,
    done: bool,
    /// A page already read ahead (see the backfill), not yet accounted for.
    pub prefetched: Option<P>,
}

impl<P> Lane<P> {
    pub fn cursor(&self) -> &[u8] {
        &self.cursor
    }

    /// Where the page that started at the lane's cursor left off, from the cursor SCAN returned
    /// (`next_cursor`).
    pub fn advance(&mut self, next: Option<Vec<u8>>) {
        match next {
            Some(cursor) => self.cursor = cursor,
            None => self.done = true,
        }
    }

    /// Which lane this is, of how many: what `next_cursor` needs, for a read ahead on another
    /// thread.
    pub fn position(&self) -> (usize, usize) {
        (self.index, self.of)
    }
}

/// The cursor lane `index` of `count` continues from after a page whose SCAN returned
/// `returned`, or `None` when the lane is done.
pub fn next_cursor(index: usize, count: usize, returned: &[u8]) -> Option<Vec<u8>> {
    if returned == b"0" {
        return None;
    }
    if count == 1 {
        return Some(returned.to_vec());
    }
    // A cluster cursor that names another master: this lane's master is done.
    let same_master = std::str::from_utf8(returned)
        .ok()
        .and_then(|c| c.parse::<u64>().ok())
        .is_some_and(|c| (c % 256) as usize == index);
    same_master.then(|| returned.to_vec())
}

pub struct Lanes<P> {
    lanes: Vec<Lane<P>>,
}

impl<P: Send> Lanes<P> {
    /// The lanes of `store`, from a saved position (`None`: from the start).
    pub fn of(store: &Store, saved: Option<&[u8]>, cancel: &CancelToken) -> Result<Self> {
        let count = store.scan_lanes(cancel)?;
        Ok(Self::from_saved(count, saved))
    }

    fn from_saved(count: usize, saved: Option<&[u8]>) -> Self {
        let start = |index: usize| Lane {
            index,
            of: count,
            cursor: if count == 1 {
                b"0".to_vec()
            } else {
                index.to_string().into_bytes()
            },
            done: false,
            prefetched: None,
        };
        let mut lanes: Vec<Lane<P>> = (0..count).map(start).collect();
        let Some(saved) = saved.filter(|s| !s.is_empty() && *s != b"0") else {
            return Lanes { lanes };
        };
        match saved.strip_prefix(PREFIX) {
            Some(list) => {
                let cursors: Vec<&[u8]> = list.split(|b| *b == b',').collect();
                // Saved with another number of masters (the topology changed), or a cursor that
                // does not name its own lane's master (an edited file): start again rather than
                // skip keys (a backfill never overwrites what it copied; verify compares again).
                let own_master = |(index, cursor): (usize, &&[u8])| {
                    *cursor == DONE
                        || std::str::from_utf8(cursor)
                            .ok()
                            .and_then(|c| c.parse::<u64>().ok())
                            .is_some_and(|c| (c % 256) as usize == index)
                };
                if cursors.len() == count && cursors.iter().enumerate().all(own_master) {
                    for (lane, cursor) in lanes.iter_mut().zip(cursors) {
                        if cursor == DONE {
                            lane.done = true;
                        } else {
                            lane.cursor = cursor.to_vec();
                        }
                    }
                }
            }
            None if count == 1 => lanes[0].cursor = saved.to_vec(),
            None => {
                let index = std::str::from_utf8(saved)
                    .ok()
                    .and_then(|c| c.parse::<u64>().ok())
                    .map(|c| (c % 256) as usize);
                if let Some(index) = index.filter(|i| *i < count) {
                    lanes
                        .iter_mut()
                        .take(index)
                        .for_each(|lane| lane.done = true);
                    lanes[index].cursor = saved.to_vec();
                }
            }
        }
        Lanes { lanes }
    }

    pub fn count(&self) -> usize {
        self.lanes.len()
    }

    pub fn done(&self) -> bool {
        self.lanes.iter().all(|lane| lane.done)
    }

    /// The position to save (see the module's comment).
    pub fn saved(&self) -> Vec<u8> {
        // A single lane's cursor as it is, unless the walk is over: SCAN's "0" would then read
        // as "from the start", and a backfill resumed in its last second looks would walk again.
        if let [lane] = self.lanes.as_slice() {
            if !lane.done {
                return lane.cursor.clone();
            }
        }
        let mut saved = PREFIX.to_vec();
        for (i, lane) in self.lanes.iter().enumerate() {
            if i > 0 {
                saved.push(b',');
            }
            saved.extend_from_slice(if lane.done { DONE } else { &lane.cursor });
        }
        saved
    }

    /// Runs `page` once on each of up to `WORKERS` lanes that are not done, side by side (see
    /// `cancel::all`: an interrupt of the caller cancels every lane), and returns what each
    /// returned. A single lane runs on the caller's thread.
    pub fn run<T: Send>(
        &mut self,
        cancel: &CancelToken,
        page: impl Fn(&mut Lane<P>, &CancelToken) -> Result<T> + Sync,
    ) -> Vec<Result<T>> {
        let mut active: Vec<&mut Lane<P>> = self
            .lanes
            .iter_mut()
            .filter(|lane| !lane.done)
            .take(WORKERS)
            .collect();
        if let [lane] = active.as_mut_slice() {
            return vec![page(lane, cancel)];
        }
        let page = &page;
        let jobs: Vec<_> = active
            .into_iter()
            .map(|lane| move |token: &CancelToken| page(lane, token))
            .collect();
        crate::transport::cancel::all(cancel, jobs)
            .into_iter()
            .map(|done| {
                done.unwrap_or_else(|| Err(Error::Protocol("a scan worker panicked".into())))
            })
            .collect()
    }
}

/// One SCAN page: the next cursor and the keys.
pub(crate) fn scan_page(
    store: &Store,
    cursor: &[u8],
    pattern: Option<&[u8]>,
    count: usize,
    cancel: &CancelToken,
) -> Result<(Vec<u8>, Vec<Vec<u8>>)> {
    let count = count.to_string();
    let mut scan = Command::from_args([&b"SCAN"[..], cursor, b"COUNT", count.as_bytes()]);
    if let Some(pattern) = pattern {
        scan.push(b"MATCH");
        scan.push(pattern);
    }
    match store.call(&scan, Default::default(), cancel)? {
        Reply::Array(mut page) if page.len() == 2 => {
            let keys = match page.pop() {
                Some(Reply::Array(keys)) => keys
                    .into_iter()
                    .filter_map(|k| match k {
                        Reply::Bulk(k) => Some(k),
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            };
            let cursor = page
                .pop()
                .and_then(|c| c.as_bytes().map(<[u8]>::to_vec))
                .unwrap_or_else(|| b"0".to_vec());
            Ok((cursor, keys))
        }
        Reply::Error(line) => Err(Error::Server(ServerErrorReply::from_line(&line))),
        other => Err(Error::Protocol(format!("unexpected SCAN reply {other:?}"))),
    }
}

pub(crate) fn integer(reply: &Reply) -> Option<i64> {
    match reply {
        Reply::Integer(n) => Some(*n),
        _ => None,
    }
}

/// How many keys a store holds, for progress (DBSIZE); 0, unknown, inside a key namespace,
/// whose keys only a full SCAN could count.
pub fn estimated_keys(store: &Store, cancel: &CancelToken) -> Result<u64> {
    if store.config().namespace.is_some() {
        return Ok(0);
    }
    let dbsize = store.call(&Command::from_args(["DBSIZE"]), Default::default(), cancel)?;
    Ok(integer(&dbsize).unwrap_or(0).max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved(count: usize, position: &[u8]) -> Vec<u8> {
        Lanes::<()>::from_saved(count, Some(position)).saved()
    }

    #[test]
    fn a_single_server_keeps_its_plain_scan_cursor() {
        let lanes = Lanes::<()>::from_saved(1, None);
        assert_eq!(lanes.saved(), b"0");
        assert_eq!(saved(1, b"1234"), b"1234");
        assert_eq!(next_cursor(0, 1, b"99"), Some(b"99".to_vec()));
        assert_eq!(next_cursor(0, 1, b"0"), None);
    }

    #[test]
    fn a_cluster_lane_ends_where_the_cursor_moves_to_the_next_master() {
        assert_eq!(Lanes::<()>::from_saved(3, None).saved(), b"lanes:0,1,2");
        // Master 1's own cursor 5 is 5 << 8 | 1.
        assert_eq!(next_cursor(1, 3, b"1281"), Some(b"1281".to_vec()));
        assert_eq!(next_cursor(1, 3, b"2"), None);
        assert_eq!(next_cursor(2, 3, b"0"), None);
    }

    #[test]
    fn continues_a_saved_position_including_one_of_the_walk_one_master_after_the_other() {
        assert_eq!(saved(3, b"lanes:-,1281,2"), b"lanes:-,1281,2");
        assert_eq!(saved(3, b"1281"), b"lanes:-,1281,2");
        // Saved with another number of masters, or naming another lane's master: from the start.
        assert_eq!(saved(2, b"lanes:-,1281,2"), b"lanes:0,1");
        assert_eq!(saved(3, b"lanes:1,1,2"), b"lanes:0,1,2");
        assert_eq!(saved(3, b"lanes:x,y,z"), b"lanes:0,1,2");
        assert_eq!(saved(3, b"lanes:-,-,-"), b"lanes:-,-,-");
        // One server's finished walk stays finished.
        assert_eq!(saved(1, b"lanes:-"), b"lanes:-");
        assert!(Lanes::<()>::from_saved(1, Some(b"lanes:-")).done());
        assert!(Lanes::<()>::from_saved(3, Some(b"lanes:-,-,-")).done());
    }
}
