//! The slot map: which master serves each slot, loaded with CLUSTER SLOTS, patched by MOVED,
//! and the node stores it names.

use super::*;

/// A burst of MOVED replies (a resharding in progress) reloads the slot map at most this often;
/// in between, each MOVED patches the one slot it names.
pub(super) const MIN_REFRESH_INTERVAL: Duration = Duration::from_millis(100);

/// Which master serves each slot, as one node last described it.
pub(super) struct Topology {
    /// Index into `masters` per slot; `None` for a slot no master serves.
    pub(super) slots: Vec<Option<u16>>,
    /// Sorted by location, so a SCAN cursor's node index means the same node on every call.
    pub(super) masters: Vec<Arc<Node>>,
    pub(super) refreshed_at: Instant,
}

impl Topology {
    pub(super) fn master_of(&self, slot: u16) -> Option<&Arc<Node>> {
        self.slots[slot as usize].map(|i| &self.masters[i as usize])
    }
}

impl Cluster {
    /// The slot moved for good: reload the slot map (at most every 100 ms), and in any case
    /// send that slot to the node that answered MOVED.
    pub(super) fn moved(&self, slot: u16, location: &str, cancel: &CancelToken) -> Arc<Node> {
        let target = self.node_at(location);
        if let Err(err) = self.refresh(cancel, MIN_REFRESH_INTERVAL) {
            tracing::debug!(error = %err, "cluster slot map reload failed after MOVED");
        }
        if let Some(current) = self.topology.load_full() {
            if current
                .master_of(slot)
                .is_none_or(|n| !Arc::ptr_eq(n, &target))
            {
                let mut masters = current.masters.clone();
                let index = match masters.iter().position(|n| Arc::ptr_eq(n, &target)) {
                    Some(i) => i,
                    None => {
                        masters.push(Arc::clone(&target));
                        masters.len() - 1
                    }
                };
                let mut slots = current.slots.clone();
                slots[slot as usize] = Some(index as u16);
                self.topology.store(Some(Arc::new(Topology {
                    slots,
                    masters,
                    refreshed_at: current.refreshed_at,
                })));
            }
        }
        target
    }

    pub(super) fn topology(&self, cancel: &CancelToken) -> Result<Arc<Topology>> {
        match self.topology.load_full() {
            Some(topology) => Ok(topology),
            None => self.refresh(cancel, Duration::MAX),
        }
    }

    /// Asks the known masters, then the configured nodes, for CLUSTER SLOTS until one answers.
    /// A map younger than `min_age` (another thread just reloaded it) is kept as it is.
    pub(super) fn refresh(&self, cancel: &CancelToken, min_age: Duration) -> Result<Arc<Topology>> {
        let wait = self
            .node_config
            .connect_timeout
            .unwrap_or(Duration::from_secs(5));
        let _guard = self.refreshing.try_lock_for(wait);
        if let Some(current) = self.topology.load_full() {
            if min_age == Duration::MAX || current.refreshed_at.elapsed() < min_age {
                return Ok(current);
            }
        }
        let mut candidates: Vec<Address> = self
            .topology
            .load_full()
            .map(|t| {
                t.masters
                    .iter()
                    .map(|n| n.config().address.clone())
                    .collect()
            })
            .unwrap_or_default();
        candidates.extend(self.seeds.iter().cloned());
        let mut last_error = Error::InvalidConfig("a cluster store needs at least one node".into());
        let mut asked = Vec::new();
        for address in candidates {
            if asked.contains(&address) {
                continue;
            }
            asked.push(address.clone());
            let node = self.node(&address);
            let slots = Command::from_args(["cluster", "slots"]);
            match node.call(&slots, ReadTimeout::Configured, cancel) {
                Ok(reply) => match self.parse_slots(&reply, &address) {
                    Ok(topology) => {
                        let topology = Arc::new(topology);
                        self.topology.store(Some(Arc::clone(&topology)));
                        return Ok(topology);
                    }
                    Err(err) => last_error = err,
                },
                Err(err) => last_error = err,
            }
        }
        Err(last_error)
    }

    /// CLUSTER SLOTS: `[[start, end, [host, port, id, …], replica…], …]`. An empty host means
    /// the node that answered.
    pub(super) fn parse_slots(&self, reply: &Reply, asked: &Address) -> Result<Topology> {
        let ranges = match reply {
            Reply::Array(ranges) => ranges,
            Reply::Error(line) => return Err(Error::Server(ServerErrorReply::from_line(line))),
            _ => return Err(Error::Protocol("unexpected CLUSTER SLOTS reply".into())),
        };
        let asked_host = match asked {
            Address::Tcp { host, .. } => host.clone(),
            Address::Unix { .. } => String::from("127.0.0.1"),
        };
        let mut masters: Vec<Arc<Node>> = Vec::new();
        let mut assigned: Vec<(i64, i64, String)> = Vec::new();
        for range in ranges {
            let Reply::Array(fields) = range else {
                continue;
            };
            let (
                Some(Reply::Integer(start)),
                Some(Reply::Integer(end)),
                Some(Reply::Array(master)),
            ) = (fields.first(), fields.get(1), fields.get(2))
            else {
                continue;
            };
            let host = master
                .first()
                .and_then(Reply::as_bytes)
                .map(|h| String::from_utf8_lossy(h).into_owned())
                .filter(|h| !h.is_empty() && h != "?")
                .unwrap_or_else(|| asked_host.clone());
            let Some(Reply::Integer(port)) = master.get(1) else {
                continue;
            };
            let location = format!("{host}:{port}");
            assigned.push((*start, *end, location));
        }
        if assigned.is_empty() {
            return Err(Error::Server(ServerErrorReply::from_line(
                b"CLUSTERDOWN The cluster has no slots assigned",
            )));
        }
        let mut locations: Vec<String> = assigned.iter().map(|(_, _, l)| l.clone()).collect();
        locations.sort();
        locations.dedup();
        for location in &locations {
            masters.push(self.node_at(location));
        }
        let mut slots = vec![None; SLOTS];
        for (start, end, location) in assigned {
            let Ok(index) = locations.binary_search(&location) else {
                continue;
            };
            let range = start.clamp(0, SLOTS as i64 - 1)..=end.clamp(0, SLOTS as i64 - 1);
            for slot in range {
                slots[slot as usize] = Some(index as u16);
            }
        }
        Ok(Topology {
            slots,
            masters,
            refreshed_at: Instant::now(),
        })
    }

    pub(super) fn node_at(&self, location: &str) -> Arc<Node> {
        let (host, port) = location.rsplit_once(':').unwrap_or((location, "6379"));
        let host = if host.is_empty() { "127.0.0.1" } else { host };
        let address = Address::Tcp {
            host: host.trim_matches(|c| c == '[' || c == ']').to_string(),
            port: port.parse().unwrap_or(6379),
        };
        self.node(&address)
    }

    pub(super) fn node(&self, address: &Address) -> Arc<Node> {
        let location = address.location();
        let new_node = || {
            let mut config = self.node_config.clone();
            config.address = address.clone();
            Arc::new(Node::new(
                config,
                Arc::clone(&self.reset),
                Arc::clone(&self.in_doubt),
            ))
        };
        // Waited for with a timeout, like `refreshing`: past it (the lock's holder did not
        // survive a fork) the node works unregistered, only without a pool shared with others.
        let Some(mut nodes) = self.nodes.try_lock_for(Duration::from_secs(1)) else {
            return new_node();
        };
        if let Some(node) = nodes.get(&location) {
            return Arc::clone(node);
        }
        let node = new_node();
        nodes.insert(location, Arc::clone(&node));
        node
    }
}
