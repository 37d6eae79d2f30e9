//! The two stores of one functional partition and the place where each call is sent. Until
//! routing by feature flags lands, every call goes to the default store, the secondary: a
//! MultiStore then behaves exactly as a plain client of the store the data lives on today.

use crate::cancel::CancelToken;
use crate::command::Command;
use crate::config::StoreConfig;
use crate::connection::Reply;
use crate::error::Result;
use crate::session::Session;
use crate::store::{blocking_read_timeout, ReadTimeout, Store};
use std::sync::Arc;
use std::time::Duration;

pub struct MultiStore {
    instance_name: String,
    primary: Arc<Store>,
    secondary: Arc<Store>,
}

impl MultiStore {
    pub fn new(
        instance_name: impl Into<String>,
        primary: StoreConfig,
        secondary: StoreConfig,
    ) -> Self {
        MultiStore {
            instance_name: instance_name.into(),
            primary: Arc::new(Store::new(primary)),
            secondary: Arc::new(Store::new(secondary)),
        }
    }

    pub fn instance_name(&self) -> &str {
        &self.instance_name
    }

    pub fn primary(&self) -> &Arc<Store> {
        &self.primary
    }

    pub fn secondary(&self) -> &Arc<Store> {
        &self.secondary
    }

    pub fn default_store(&self) -> &Arc<Store> {
        &self.secondary
    }

    pub fn call(&self, cmd: &Command, cancel: &CancelToken) -> Result<Reply> {
        self.default_store()
            .call(cmd, ReadTimeout::Configured, cancel)
    }

    /// A blocking command (BLPOP, XREAD BLOCK …) whose own timeout extends the socket's.
    pub fn call_blocking(
        &self,
        cmd: &Command,
        timeout: Duration,
        cancel: &CancelToken,
    ) -> Result<Reply> {
        let store = self.default_store();
        store.call(cmd, blocking_read_timeout(store.config(), timeout), cancel)
    }

    /// A call that waits as long as the server takes (MONITOR-like loops read with this).
    pub fn call_without_timeout(&self, cmd: &Command, cancel: &CancelToken) -> Result<Reply> {
        self.default_store()
            .call(cmd, ReadTimeout::Override(None), cancel)
    }

    pub fn pipeline(&self, cmds: &[Command], cancel: &CancelToken) -> Result<Vec<Reply>> {
        self.default_store().pipeline(cmds, cancel)
    }

    pub fn session(&self) -> Session {
        Session::new(Arc::clone(self.default_store()))
    }

    pub fn select(&self, db: i64) {
        self.default_store().select(db);
    }

    pub fn disconnect(&self) {
        self.primary.disconnect();
        self.secondary.disconnect();
    }

    pub fn is_connected(&self) -> bool {
        self.default_store().is_connected()
    }
}
