//! The RabbitMQ management API, from `RABBITMQ_MANAGEMENT_URL` (as `scripts/stack.sh env`
//! prints it): broker connections by client-given name, closing them, and queues.

use std::time::Duration;

use serde_json::Value;

use crate::support::eventually::eventually_every;

pub struct Management {
    http: reqwest::Client,
    base: url::Url,
    user: String,
    pass: String,
}

impl Management {
    pub fn from_env() -> Management {
        let raw = std::env::var("RABBITMQ_MANAGEMENT_URL")
            .unwrap_or_else(|_| "http://guest:guest@127.0.0.1:15672".to_owned());
        let mut base: url::Url = raw.parse().expect("RABBITMQ_MANAGEMENT_URL is a URL");
        let (user, pass) = (
            base.username().to_owned(),
            base.password().unwrap_or("").to_owned(),
        );
        let _ = base.set_username("");
        let _ = base.set_password(None);
        Management {
            http: reqwest::Client::new(),
            base,
            user,
            pass,
        }
    }

    /// The API's base URL, without credentials.
    pub fn base(&self) -> &url::Url {
        &self.base
    }

    fn api(&self, segments: &[&str]) -> url::Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("an http URL")
            .clear()
            .push("api")
            .extend(segments);
        url
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, segments: &[&str]) -> Option<T> {
        self.http
            .get(self.api(segments))
            .basic_auth(&self.user, Some(&self.pass))
            .send()
            .await
            .ok()?
            .error_for_status()
            .ok()?
            .json()
            .await
            .ok()
    }

    /// Names of the broker connections whose client-given name contains `needle`; `None` if
    /// the API does not answer.
    pub async fn connections(&self, needle: &str) -> Option<Vec<String>> {
        let list: Vec<Value> = self.get_json(&["connections"]).await?;
        Some(
            list.iter()
                .filter(|c| {
                    c["client_properties"]["connection_name"]
                        .as_str()
                        .is_some_and(|n| n.contains(needle))
                })
                .filter_map(|c| c["name"].as_str().map(str::to_owned))
                .collect(),
        )
    }

    /// [`Management::connections`] once at least one is listed (the API lists a connection
    /// after its next statistics tick, ~5 s); `None` if the API does not answer, failing if
    /// none is listed within `timeout`.
    pub async fn wait_connections(&self, needle: &str, timeout: Duration) -> Option<Vec<String>> {
        eventually_every(
            timeout,
            Duration::from_millis(250),
            &format!("connection {needle:?} not listed"),
            async || match self.connections(needle).await {
                // The API does not answer: no use waiting.
                None => Some(None),
                Some(names) if names.is_empty() => None,
                names => Some(names),
            },
        )
        .await
    }

    /// Has the broker close connection `name`, giving `reason`.
    pub async fn close(&self, name: &str, reason: &str) {
        self.http
            .delete(self.api(&["connections", name]))
            .basic_auth(&self.user, Some(&self.pass))
            .header("X-Reason", reason)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .expect("connection closed by the broker");
    }

    /// `queue` in the default vhost as the API shows it (type, arguments, counts, message
    /// statistics); `None` if the API does not answer or has no such queue.
    pub async fn queue(&self, queue: &str) -> Option<Value> {
        self.get_json(&["queues", "/", queue]).await
    }

    /// `messages` (ready + unacked) of `queue` in the default vhost; `None` if the API does
    /// not answer.
    pub async fn queue_messages(&self, queue: &str) -> Option<u64> {
        let v = self.queue(queue).await?;
        Some(v["messages"].as_u64()? + v["messages_unacknowledged"].as_u64().unwrap_or(0))
    }

    /// PUTs `body` at `segments` of the API, panicking on an error status.
    async fn put(&self, segments: &[&str], body: Value) {
        self.http
            .put(self.api(segments))
            .basic_auth(&self.user, Some(&self.pass))
            .json(&body)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .unwrap_or_else(|e| panic!("PUT {segments:?}: {e}"));
    }

    async fn delete(&self, segments: &[&str]) {
        let _ = self
            .http
            .delete(self.api(segments))
            .basic_auth(&self.user, Some(&self.pass))
            .send()
            .await;
    }

    /// Creates `vhost` and a user `name` with `password`, no tags, and the permissions
    /// `configure`, `write` and `read` (regular expressions) on that vhost only.
    pub async fn user_on_vhost(
        &self,
        vhost: &str,
        name: &str,
        password: &str,
        [configure, write, read]: [&str; 3],
    ) {
        self.put(&["vhosts", vhost], serde_json::json!({})).await;
        self.put(
            &["users", name],
            serde_json::json!({"password": password, "tags": ""}),
        )
        .await;
        self.put(
            &["permissions", vhost, name],
            serde_json::json!({"configure": configure, "write": write, "read": read}),
        )
        .await;
    }

    /// Deletes `vhost` (and everything in it) and the user `name`.
    pub async fn remove_user_and_vhost(&self, vhost: &str, name: &str) {
        self.delete(&["vhosts", vhost]).await;
        self.delete(&["users", name]).await;
    }
}
