//! The lease as a Kubernetes `coordination.k8s.io/v1` Lease, over the API
//! server's REST interface.
//!
//! - Take: create the Lease, or replace one whose holder let it run out
//!   (`renewTime + leaseDurationSeconds` in the past) or gave it up.
//! - Renew: replace it with a new `renewTime`.
//! - Release: replace it with no holder.
//!
//! Every replace carries the `resourceVersion` that was read, so the API
//! server refuses (409) a write that lost a race: two replicas taking over
//! an expired Lease cannot both succeed, which is the rule client-go's
//! leader election follows. The API server keeps no time for a Lease: the
//! holder writes `renewTime` from its clock and the others judge expiry from
//! theirs, so the margin that keeps two holders apart (a fifth of the TTL)
//! also covers the skew between the nodes' clocks.
//!
//! Written on reqwest rather than kube-rs: the two maintained crates for
//! this (kube-leader-election, kube-lease-manager) either take over without
//! a `resourceVersion` precondition or report holding while renewals fail,
//! and kube with k8s-openapi would add a large generated crate to every
//! build for four HTTP calls.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use super::{holder_value, identity_in, Attempt, LeaseError, LeaseStore};

/// Where a pod finds its service account.
const SERVICE_ACCOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// How to reach the Lease.
#[derive(Debug, Clone)]
pub struct Target {
    /// The Lease's URL: `<api>/apis/coordination.k8s.io/v1/namespaces/<ns>/leases/<name>`.
    pub lease_url: String,
    pub namespace: String,
    pub name: String,
    /// Read before each request: a projected service-account token is
    /// replaced while the pod runs.
    pub token_file: Option<PathBuf>,
    pub client: reqwest::Client,
}

impl Target {
    /// The Lease `name` as the pod's service account reaches it, with what
    /// `settings` overrides (`api_url`, `namespace`, `token_file`,
    /// `ca_file`).
    pub fn from_settings(
        settings: &crate::config::ElectionKubernetesConfig,
        timeout: Duration,
    ) -> Result<Target, LeaseError> {
        let store = |what: String| LeaseError::Store(what);
        let in_cluster = std::path::Path::new(SERVICE_ACCOUNT);
        let api = match &settings.api_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => {
                let host = std::env::var("KUBERNETES_SERVICE_HOST").map_err(|_| {
                    store("KUBERNETES_SERVICE_HOST is not set (not in a pod): set election.kubernetes.api_url".to_owned())
                })?;
                let port =
                    std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".to_owned());
                if host.contains(':') {
                    format!("https://[{host}]:{port}")
                } else {
                    format!("https://{host}:{port}")
                }
            }
        };
        let namespace = match &settings.namespace {
            Some(namespace) => namespace.clone(),
            None => std::fs::read_to_string(in_cluster.join("namespace"))
                .map(|text| text.trim().to_owned())
                .map_err(|e| {
                    store(format!(
                        "the pod's namespace ({SERVICE_ACCOUNT}/namespace): {e}; set election.kubernetes.namespace"
                    ))
                })?,
        };
        let token_file = settings.token_file.clone().or_else(|| {
            let path = in_cluster.join("token");
            path.exists().then_some(path)
        });
        let ca_file = settings.ca_file.clone().or_else(|| {
            let path = in_cluster.join("ca.crt");
            path.exists().then_some(path)
        });
        let mut builder = reqwest::Client::builder().timeout(timeout);
        if let Some(path) = &ca_file {
            builder = crate::net::tls::ExtraRoots::load(path)
                .and_then(|roots| roots.trusted_by(builder))
                .map_err(|e| store(format!("election.kubernetes.ca_file: {e}")))?;
        }
        let client = builder.build().map_err(|e| LeaseError::store(&e))?;
        Ok(Target {
            lease_url: format!(
                "{api}/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{}",
                settings.lease
            ),
            namespace,
            name: settings.lease.clone(),
            token_file,
            client,
        })
    }

    fn collection_url(&self) -> &str {
        self.lease_url
            .rsplit_once('/')
            .map_or(&self.lease_url, |(collection, _)| collection)
    }

    fn request(
        &self,
        method: reqwest::Method,
        url: &str,
    ) -> Result<reqwest::RequestBuilder, LeaseError> {
        let request = self.client.request(method, url);
        match &self.token_file {
            Some(path) => {
                let token = std::fs::read_to_string(path).map_err(|e| {
                    LeaseError::Store(format!("token file {}: {e}", path.display()))
                })?;
                Ok(request.bearer_auth(token.trim()))
            }
            None => Ok(request),
        }
    }
}

/// The Lease this replica competes for.
pub struct KubeLease {
    target: Target,
    /// `holderIdentity`: this replica's identity and a number drawn at start.
    holder: String,
    ttl: Duration,
    /// The Lease as this replica last wrote it, while it holds it.
    held: Option<Value>,
}

/// What a Lease says of its holder.
struct Seen {
    holder: Option<String>,
    /// When the holder's lease runs out, by this replica's clock.
    expires: Option<SystemTime>,
}

fn seen(lease: &Value) -> Seen {
    let spec = &lease["spec"];
    let holder = spec["holderIdentity"]
        .as_str()
        .filter(|holder| !holder.is_empty())
        .map(str::to_owned);
    let renewed = spec["renewTime"]
        .as_str()
        .or(spec["acquireTime"].as_str())
        .and_then(|time| humantime::parse_rfc3339_weak(time).ok());
    let duration = spec["leaseDurationSeconds"]
        .as_u64()
        .map(Duration::from_secs);
    Seen {
        holder,
        expires: renewed.zip(duration).map(|(at, lasts)| at + lasts),
    }
}

/// A Kubernetes `MicroTime`.
fn micro_time(at: SystemTime) -> String {
    humantime::format_rfc3339_micros(at).to_string()
}

impl KubeLease {
    pub fn new(target: Target, identity: &str, ttl: Duration) -> KubeLease {
        KubeLease {
            target,
            holder: holder_value(identity),
            ttl,
            held: None,
        }
    }

    async fn get(&self) -> Result<Option<Value>, LeaseError> {
        let response = self
            .target
            .request(reqwest::Method::GET, &self.target.lease_url)?
            .send()
            .await
            .map_err(failed)?;
        match response.status().as_u16() {
            404 => Ok(None),
            200 => body(response).await.map(Some),
            status => Err(refused("GET", status, response).await),
        }
    }

    /// Writes `lease` (a create when `create`, else a replace at its
    /// `resourceVersion`); `Ok(None)` when the API server says another
    /// write came first (409).
    async fn write(&self, lease: &Value, create: bool) -> Result<Option<Value>, LeaseError> {
        let (method, url) = if create {
            (reqwest::Method::POST, self.target.collection_url())
        } else {
            (reqwest::Method::PUT, self.target.lease_url.as_str())
        };
        let response = self
            .target
            .request(method.clone(), url)?
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(lease.to_string())
            .send()
            .await
            .map_err(failed)?;
        match response.status().as_u16() {
            200 | 201 => body(response).await.map(Some),
            409 => Ok(None),
            status => Err(refused(method.as_str(), status, response).await),
        }
    }

    /// Writes the Lease `base` (as read; `None`: there is none yet) as held
    /// by this replica from `now`: created or replaced, so that when another
    /// write came first (409) the lease is another replica's.
    async fn take(&mut self, base: Option<&Value>, now: SystemTime) -> Result<Attempt, LeaseError> {
        match self.write(&self.taken(base, now), base.is_none()).await? {
            Some(written) => {
                self.held = Some(written);
                Ok(Attempt::Held)
            }
            None => Ok(Attempt::Taken {
                holder: "another replica (its write came first)".to_owned(),
                free_in: None,
            }),
        }
    }

    /// `base` (the Lease as read, or nothing) held by this replica from now.
    fn taken(&self, base: Option<&Value>, now: SystemTime) -> Value {
        let transitions = base
            .and_then(|lease| lease["spec"]["leaseTransitions"].as_i64())
            .unwrap_or(0);
        let mut lease = base.cloned().unwrap_or_else(|| {
            json!({
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.target.name, "namespace": self.target.namespace},
            })
        });
        lease["spec"] = json!({
            "holderIdentity": self.holder,
            "leaseDurationSeconds": self.ttl.as_secs().max(1),
            "acquireTime": micro_time(now),
            "renewTime": micro_time(now),
            "leaseTransitions": if base.is_some() { transitions + 1 } else { 0 },
        });
        lease
    }
}

/// A response's JSON body.
async fn body(response: reqwest::Response) -> Result<Value, LeaseError> {
    let bytes = response.bytes().await.map_err(failed)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| LeaseError::Store(format!("the API server's answer is not JSON: {e}")))
}

fn failed(error: reqwest::Error) -> LeaseError {
    LeaseError::store(&error)
}

async fn refused(method: &str, status: u16, response: reqwest::Response) -> LeaseError {
    let body = response.text().await.unwrap_or_default();
    let message = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|status| status["message"].as_str().map(str::to_owned))
        .unwrap_or(body);
    LeaseError::Store(format!("{method} lease: HTTP {status}: {message}"))
}

impl LeaseStore for KubeLease {
    async fn acquire(&mut self) -> Result<Attempt, LeaseError> {
        let now = SystemTime::now();
        let Some(lease) = self.get().await? else {
            return self.take(None, now).await;
        };
        let seen = seen(&lease);
        let free = match (&seen.holder, seen.expires) {
            (None, _) => true,
            // This replica's own, whose answer was lost: renewed below, so
            // its validity counts from now.
            (Some(holder), _) if *holder == self.holder => true,
            (Some(_), Some(expires)) => expires <= now,
            (Some(_), None) => false,
        };
        if !free {
            return Ok(Attempt::Taken {
                holder: identity_in(seen.holder.as_deref().unwrap_or_default()).to_owned(),
                free_in: seen
                    .expires
                    .map(|expires| expires.duration_since(now).unwrap_or_default()),
            });
        }
        self.take(Some(&lease), now).await
    }

    async fn renew(&mut self) -> Result<(), LeaseError> {
        let Some(mut lease) = self.held.clone() else {
            return Err(LeaseError::Lost("nobody (not taken)".to_owned()));
        };
        lease["spec"]["renewTime"] = json!(micro_time(SystemTime::now()));
        if let Some(written) = self.write(&lease, false).await? {
            self.held = Some(written);
            return Ok(());
        }
        // Someone else wrote the Lease since: still ours (a tool touched
        // it), or taken over.
        let current = self.get().await?;
        let holder = current.as_ref().and_then(|lease| seen(lease).holder);
        if holder.as_deref() == Some(self.holder.as_str()) {
            self.held = current;
            return Err(LeaseError::Store(
                "the lease changed under this replica; renewing again".to_owned(),
            ));
        }
        self.held = None;
        Err(LeaseError::Lost(holder.map_or_else(
            || "nobody".to_owned(),
            |h| identity_in(&h).to_owned(),
        )))
    }

    async fn release(&mut self) -> Result<(), LeaseError> {
        let Some(mut lease) = self.held.take() else {
            return Ok(());
        };
        lease["spec"]["holderIdentity"] = Value::Null;
        lease["spec"]["renewTime"] = json!(micro_time(SystemTime::now()));
        self.write(&lease, false).await.map(drop)
    }

    async fn released(&mut self) {
        // The followers read the Lease on their beat.
        std::future::pending().await
    }

    fn backend(&self) -> &'static str {
        "kubernetes"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_says_who_holds_it_until_when() {
        let lease = json!({"spec": {
            "holderIdentity": "pod-1 00000000000000ff",
            "leaseDurationSeconds": 10,
            "renewTime": "2026-12-02T07:10:53.123456Z",
        }});
        let seen = seen(&lease);
        assert_eq!(identity_in(seen.holder.as_deref().unwrap()), "pod-1");
        assert_eq!(
            micro_time(seen.expires.unwrap()),
            "2026-12-02T07:11:03.123456Z"
        );
        // Given up: no holder.
        let released = json!({"spec": {"holderIdentity": null, "leaseDurationSeconds": 10}});
        assert!(seen_holder_is_none(&released));
    }

    fn seen_holder_is_none(lease: &Value) -> bool {
        seen(lease).holder.is_none()
    }
}
