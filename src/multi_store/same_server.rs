//! Whether the two stores are one server under two names (then every write goes to one only,
//! never applied twice), and that namespaced stores do not overlap.

use super::*;

impl MultiStore {
    /// True when both stores hold the same data: the same server (as configured, or as the
    /// servers' run_ids show once both were reached) and the same database. Every write then
    /// goes to one store only, so it is never applied twice.
    pub fn same_store(&self, flags: Flags, cancel: &CancelToken) -> bool {
        if self.configured_same {
            return true;
        }
        let same_server = match self.same_server.load(Ordering::Acquire) {
            SAME_SERVER_UNKNOWN => self.ask_same_server(flags, cancel),
            known => known == SAME_SERVER,
        };
        same_server
            && self.stores.primary.db() == self.stores.secondary.db()
            && self.stores.primary.config().namespace == self.stores.secondary.config().namespace
    }

    /// Compares the servers' run_ids (read by every connection's handshake), connecting to a
    /// store not reached yet. Cached once both are known; while one cannot be reached the
    /// stores count as different (a write then goes to both, as before sameness could be told)
    /// and they are asked again a second later.
    pub(super) fn ask_same_server(&self, flags: Flags, cancel: &CancelToken) -> bool {
        if self.stores.primary.cluster().is_some() || self.stores.secondary.cluster().is_some() {
            // A cluster's nodes each have their own run_id: sameness is the configuration's.
            self.same_server.store(OTHER_SERVERS, Ordering::Release);
            return false;
        }
        let wait = self
            .stores
            .primary
            .config()
            .connect_timeout
            .unwrap_or(Duration::from_secs(5))
            .saturating_mul(2);
        let _asking = self.same_server_asking.try_lock_for(wait);
        match self.same_server.load(Ordering::Acquire) {
            SAME_SERVER_UNKNOWN => {}
            known => return known == SAME_SERVER, // told while this thread waited
        }
        {
            let mut asked = self.same_server_asked.lock();
            if asked.is_some_and(|at| at.elapsed() < SAME_SERVER_RETRY) {
                return false;
            }
            *asked = Some(Instant::now());
        }
        let run_id = |role: Role| {
            let store = self.store(role);
            if let Some(id) = store.run_id() {
                return Ok(Some(id));
            }
            // Reaching a store that does not answer costs its connect timeout; for the store
            // that is not the default its breaker decides, and hears how it went.
            let default = default_role(flags);
            match self.through_breaker(role, default, || store.learn_run_id(cancel)) {
                Some(answer) => answer,
                None => Err(Error::Interrupted),
            }
        };
        let (Ok(primary), Ok(secondary)) = (run_id(Role::Primary), run_id(Role::Secondary)) else {
            return false;
        };
        // A server that does not tell its run_id (INFO refused) can only be judged by the
        // configuration.
        let same = matches!((&primary, &secondary), (Some(p), Some(s)) if p == s);
        self.same_server.store(
            if same { SAME_SERVER } else { OTHER_SERVERS },
            Ordering::Release,
        );
        if same
            && self.stores.primary.db() == self.stores.secondary.db()
            && self.stores.primary.config().namespace == self.stores.secondary.config().namespace
        {
            tracing::warn!(instance_name = %self.instance_name, "both stores are the same server under two names: each write goes to it once");
        }
        same
    }

    /// A backfill or verify scans a store as a whole: a store on the same server and database
    /// as the other, whose namespace contains the other's ("cache" and "cache:v2", or no
    /// namespace and any), would take the other's keys for its own -- a backfill would copy
    /// them again one level deeper, a repair would delete the only copy. Refused, whatever the
    /// names of the server or the database selected since.
    pub fn check_namespaces_apart(&self, flags: Flags, cancel: &CancelToken) -> Result<()> {
        let (primary, secondary) = (
            &self.stores.primary.config().namespace,
            &self.stores.secondary.config().namespace,
        );
        let contains =
            |outer: &Option<crate::protocol::namespace::Namespace>,
             inner: &Option<crate::protocol::namespace::Namespace>| {
                match (outer, inner) {
                    (None, _) => true,
                    (Some(outer), Some(inner)) => inner.within(outer),
                    (Some(_), None) => false,
                }
            };
        // One namespace of one server on both sides is one store, as two names of one server are
        // (`same_store`): each write goes to it once, and there is nothing to copy.
        let overlap = primary != secondary
            && (primary.is_some() || secondary.is_some())
            && (contains(primary, secondary) || contains(secondary, primary));
        if !overlap || self.stores.primary.db() != self.stores.secondary.db() {
            return Ok(());
        }
        let same_server = match self.same_server.load(Ordering::Acquire) {
            SAME_SERVER_UNKNOWN => self.ask_same_server(flags, cancel),
            known => known == SAME_SERVER,
        };
        if !same_server {
            return Ok(());
        }
        let name = |ns: &Option<crate::protocol::namespace::Namespace>| match ns {
            Some(ns) => format!("namespace {:?}", String::from_utf8_lossy(ns.name())),
            None => "no namespace".to_string(),
        };
        Err(Error::InvalidConfig(format!(
            "the stores are one server and database, with {} and {}: one would take the other's keys for its own",
            name(primary),
            name(secondary)
        )))
    }
}
