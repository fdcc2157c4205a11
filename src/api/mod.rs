//! The qBittorrent-compatible Web API v2 (`[api] listen`): what Sonarr,
//! Radarr, cross-seed, autobrr and qbittorrent-api speak to a torrent client.
//!
//! Why here: one HTTP server, owned by the daemon and stopped with it, in
//! front of the same session paths as the watch folder and the control
//! socket. Handlers are thin; the shapes and the mapping are in `model`,
//! the checks in `guard` and `auth`.
//!
//! Every request passes, in order: the Host check and, on a POST, the
//! Origin/Referer check (`guard`, 401), then the login check (cookie `SID`
//! or `Authorization: Bearer KEY`, else 403 `Forbidden`; only `auth/login`
//! is open, and `/metrics` also takes HTTP Basic, or nothing with
//! `[api] metrics_auth = false`). Connections are bounded ([`MAX_CONNECTIONS`],
//! [`MAX_PER_ADDRESS`] from one address or IPv6 /64), headers must
//! arrive within [`HEADER_TIMEOUT`] and a whole request within
//! [`REQUEST_TIMEOUT`]; bodies are bounded before they are buffered
//! ([`FORM_LIMIT`], [`ADD_LIMIT`] for `torrents/add`), forms in fields
//! ([`MAX_FIELDS`]).

pub mod app;
pub mod auth;
pub mod category;
pub mod content;
pub mod fetch;
pub mod guard;
pub mod location;
pub mod logs;
pub mod model;
pub mod prefs;
pub mod rates;
pub mod setprefs;
pub mod sync;
pub mod tags;
pub mod torrents;

use crate::config::Config;
use crate::session::Session;
use auth::{Gate, Sessions, Throttle};
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub const MAX_CONNECTIONS: usize = 64;
/// Connections one address (an IPv6 /64) may hold at once: one client
/// cannot take every slot of [`MAX_CONNECTIONS`].
pub const MAX_PER_ADDRESS: usize = 16;
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Plain forms (`application/x-www-form-urlencoded`).
pub const FORM_LIMIT: usize = 64 * 1024;
/// `torrents/add` (multipart `.torrent` files).
pub const ADD_LIMIT: usize = 10 * 1024 * 1024 + 64 * 1024;
pub const MAX_FIELDS: usize = 256;

/// What every handler shares.
pub struct Api {
    pub session: Arc<Session>,
    hosts: guard::Hosts,
    /// The password hash the sessions and the Basic digest were opened
    /// under: when a reload changes it, they are dropped.
    seen_hash: Mutex<String>,
    /// The API key's digest, if `dropseed api new-key` made one.
    key_digest: Option<String>,
    sessions: Mutex<Sessions>,
    throttle: Mutex<Throttle>,
    /// Password checks running at once (each is 600,000 PBKDF2 rounds).
    checks: Semaphore,
    /// `sync/maindata`'s response ids.
    pub rid: std::sync::atomic::AtomicU64,
    /// What `sync/maindata` showed under recent rids (bounded).
    pub sync_history: Mutex<sync::History>,
    /// The digest of the last HTTP Basic header that passed (`/metrics`).
    basic_passed: Mutex<Option<String>>,
}

impl Api {
    /// `sync_history`, locked.
    fn sync_history(&self) -> std::sync::MutexGuard<'_, sync::History> {
        crate::locks::locked(&self.sync_history)
    }
}

impl Api {
    /// `seen_hash`, locked.
    fn seen_hash(&self) -> std::sync::MutexGuard<'_, String> {
        crate::locks::locked(&self.seen_hash)
    }
}

impl Api {
    /// `basic_passed`, locked.
    fn basic_passed(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        crate::locks::locked(&self.basic_passed)
    }
}

impl Api {
    /// `throttle`, locked.
    fn throttle(&self) -> std::sync::MutexGuard<'_, Throttle> {
        crate::locks::locked(&self.throttle)
    }
}

impl Api {
    /// `sessions`, locked.
    fn sessions(&self) -> std::sync::MutexGuard<'_, Sessions> {
        crate::locks::locked(&self.sessions)
    }
}

impl Api {
    pub fn config(&self) -> Arc<Config> {
        self.session.env.config()
    }

    /// The user name and password hash of the live config (a SIGHUP can
    /// rotate them). A new hash ends every session and forgets the Basic
    /// header that passed, so a leaked password stops working at once.
    fn credentials(&self) -> (String, String) {
        let config = self.config();
        let (user, phc) = (config.api.username.clone(), config.api.password_hash.clone());
        let mut seen = self.seen_hash();
        if *seen != phc {
            *self.sessions() = Sessions::default();
            *self.basic_passed() = None;
            seen.clone_from(&phc);
            tracing::info!("api password changed: sessions closed");
        }
        (user, phc)
    }
}

/// Binds `[api] listen`, or None when the API is off.
pub async fn bind(config: &Config) -> anyhow::Result<Option<(TcpListener, SocketAddr)>> {
    if config.api.listen.is_empty() {
        return Ok(None);
    }
    let addr: SocketAddr = config.api.listen.parse()?;
    let listener =
        TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("api.listen: cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr()?;
    Ok(Some((listener, local)))
}

/// Serves the API until `cancel`.
pub async fn serve(listener: TcpListener, local: SocketAddr, session: Arc<Session>, cancel: CancellationToken) {
    let config = session.env.config();
    let key_file = auth::key_file(&config.paths.state_dir);
    let key_digest = tokio::task::spawn_blocking(move || std::fs::read_to_string(key_file).ok()).await.ok().flatten();
    let api = Arc::new(Api {
        hosts: guard::Hosts::new(local, &config.api.hosts),
        seen_hash: Mutex::new(config.api.password_hash.clone()),
        key_digest: key_digest.map(|k| k.trim().to_string()).filter(|k| !k.is_empty()),
        sessions: Mutex::new(Sessions::default()),
        throttle: Mutex::new(Throttle::default()),
        checks: Semaphore::new(2),
        rid: 0.into(),
        sync_history: Mutex::new(sync::History::default()),
        basic_passed: Mutex::new(None),
        session,
    });
    tracing::info!(address = %local, "qBittorrent API listening");
    let router = router(api);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let per_address = Arc::new(PerAddress::default());
    let tasks = tokio_util::task::TaskTracker::new();
    loop {
        let permit = tokio::select! {
            _ = cancel.cancelled() => break,
            p = slots.clone().acquire_owned() => p.expect("never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "api accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some(address_slot) = per_address.take(peer.ip()) else {
            // Closed at once, its global slot given back with the permit.
            tracing::debug!(peer = %peer.ip(), "api: too many connections from one address");
            continue;
        };
        let (router, cancel) = (router.clone(), cancel.clone());
        tasks.spawn(async move {
            let _permit = (permit, address_slot);
            serve_connection(stream, peer, router, cancel).await;
        });
    }
    tasks.close();
    tasks.wait().await;
}

/// Connections held per address (an IPv6 /64): at most
/// [`MAX_CONNECTIONS`] entries, as only held connections count.
#[derive(Default)]
struct PerAddress(Mutex<HashMap<IpAddr, usize>>);

/// One held connection's place in its address's share; given back on drop.
struct AddressSlot {
    held: Arc<PerAddress>,
    host: IpAddr,
}

impl PerAddress {
    /// A place for one more connection from `ip`, unless its share is taken.
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        let host = crate::types::host_of(ip);
        let mut held = self.0.lock().unwrap();
        let n = held.entry(host).or_insert(0);
        if *n >= MAX_PER_ADDRESS {
            return None;
        }
        *n += 1;
        Some(AddressSlot { held: self.clone(), host })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut held = self.held.0.lock().unwrap();
        if let Some(n) = held.get_mut(&self.host) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.host);
            }
        }
    }
}

async fn serve_connection(stream: tokio::net::TcpStream, peer: SocketAddr, router: Router, cancel: CancellationToken) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(Peer(peer.ip()));
        let router = router.clone();
        async move {
            use tower::ServiceExt;
            router.oneshot(req.map(axum::body::Body::new)).await
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = cancel.cancelled() => {}
        r = conn => if let Err(e) = r { tracing::debug!(error = %e, "api connection ended") },
    }
}

/// The client's address, for the login throttle.
#[derive(Clone, Copy)]
struct Peer(IpAddr);

fn router(api: Arc<Api>) -> Router {
    let v2 = Router::new()
        .route("/auth/login", post(login))
        .route("/auth/logout", post(logout))
        .merge(app::routes())
        .merge(torrents::routes())
        .merge(sync::routes())
        .merge(tags::routes())
        .merge(category::routes())
        .merge(location::routes())
        .merge(rates::routes())
        .merge(logs::routes())
        .route("/transfer/info", get(sync::transfer_info).post(sync::transfer_info))
        .route("/log/peers", get(empty_list).post(empty_list));
    Router::new()
        .nest("/api/v2", v2)
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(api.clone(), require_login))
        .layer(middleware::from_fn_with_state(api.clone(), check_origin))
        .layer(DefaultBodyLimit::max(FORM_LIMIT))
        .layer(middleware::from_fn(refuse_announced_oversize))
        .layer(middleware::from_fn(request_timeout))
        .layer(middleware::from_fn(log_request))
        .with_state(api)
}

/// One debug line a request (`dropseed::api=debug`): what a client polls and
/// what it was answered, for whoever points a new tool at the API. The path
/// only: a query may carry a hash list or a token.
async fn log_request(req: Request, next: Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let response = next.run(req).await;
    tracing::debug!(%method, %path, status = response.status().as_u16(), "api request");
    response
}

async fn empty_list() -> axum::Json<Vec<()>> {
    axum::Json(Vec::new())
}

/// The body limit of a path: `torrents/add` carries `.torrent` files.
pub fn body_limit(path: &str) -> usize {
    if path == "/api/v2/torrents/add" {
        ADD_LIMIT
    } else {
        FORM_LIMIT
    }
}

/// A body announced (Content-Length) over its limit is refused at once,
/// before a byte of it is read; a chunked one is cut by `DefaultBodyLimit`
/// as it arrives.
async fn refuse_announced_oversize(req: Request, next: Next) -> Response {
    let announced = text(req.headers(), header::CONTENT_LENGTH).and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|n| n > body_limit(req.uri().path()) as u64) {
        return (StatusCode::PAYLOAD_TOO_LARGE, "Payload too large").into_response();
    }
    next.run(req).await
}

/// A request that has not finished in time is cut (a slow body).
async fn request_timeout(req: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(r) => r,
        Err(_) => (StatusCode::REQUEST_TIMEOUT, "Request timeout").into_response(),
    }
}

/// Host (every request) and Origin/Referer (state-changing ones), 401 as qBittorrent.
async fn check_origin(State(api): State<Arc<Api>>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    let host = text(headers, header::HOST).unwrap_or_default();
    if !api.hosts.allows(host) {
        return (StatusCode::UNAUTHORIZED, "Unauthorized").into_response();
    }
    let changes_state = req.method() != Method::GET && req.method() != Method::HEAD;
    if changes_state && !guard::same_origin(host, text(headers, header::ORIGIN), text(headers, header::REFERER)) {
        return (StatusCode::UNAUTHORIZED, "Unauthorized").into_response();
    }
    next.run(req).await
}

/// Everything but `auth/login` needs a session cookie or the API key
/// (`/metrics` checks its own, HTTP Basic too).
async fn require_login(State(api): State<Arc<Api>>, req: Request, next: Next) -> Response {
    let own_check = matches!(req.uri().path(), "/api/v2/auth/login" | "/metrics");
    if own_check || logged_in(&api, req.headers()) {
        return next.run(req).await;
    }
    (StatusCode::FORBIDDEN, "Forbidden").into_response()
}

fn logged_in(api: &Api, headers: &HeaderMap) -> bool {
    api.credentials();
    if let (Some(digest), Some(key)) =
        (&api.key_digest, text(headers, header::AUTHORIZATION).and_then(|v| v.strip_prefix("Bearer ")))
    {
        if auth::same(digest, &auth::key_digest(key.trim())) {
            return true;
        }
    }
    match sid(headers) {
        Some(id) => api.sessions().touch(id, Instant::now()),
        None => false,
    }
}

fn text(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The `SID` cookie's value.
fn sid(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix("SID="))
}

async fn login(State(api): State<Arc<Api>>, req: Request) -> Response {
    let ip = req.extensions().get::<Peer>().map_or(IpAddr::from([0, 0, 0, 0]), |p| p.0);
    if let Gate::Banned(_) = api.throttle().gate(ip, Instant::now()) {
        return (
            StatusCode::FORBIDDEN,
            "Your IP address has been banned after too many failed authentication attempts.",
        )
            .into_response();
    }
    let form = match Params::from_request(req, &api).await {
        Ok(f) => f,
        Err(r) => return r.into_response(),
    };
    let (user, password) = (form.get("username").to_string(), form.get("password").to_string());
    // Logins from many addresses at once queue here rather than fill the
    // blocking pool with key derivations.
    let _slot = api.checks.acquire().await.expect("never closed");
    // Again now: failures counted while this one waited may have banned
    // the address (many connections at once get no more guesses), and
    // the failure is counted before the slot is let go.
    if let Gate::Banned(_) = api.throttle().gate(ip, Instant::now()) {
        return (
            StatusCode::FORBIDDEN,
            "Your IP address has been banned after too many failed authentication attempts.",
        )
            .into_response();
    }
    let (username, phc) = api.credentials();
    let good_password = tokio::task::spawn_blocking(move || auth::verify_password(&phc, &password)).await;
    if user != username || !good_password.unwrap_or(false) {
        api.throttle().failed(ip, Instant::now());
        return "Fails.".into_response();
    }
    api.throttle().succeeded(ip);
    let id = api.sessions().open(Instant::now());
    let cookie = format!("SID={id}; HttpOnly; SameSite=Strict; path=/");
    ([(header::SET_COOKIE, cookie)], "Ok.").into_response()
}

/// `GET /metrics`: the Prometheus text. Asks for the API's credentials (the
/// cookie, the key, or HTTP Basic with the API's user name and password)
/// unless `[api] metrics_auth = false`.
async fn metrics(State(api): State<Arc<Api>>, req: Request) -> Response {
    let ip = req.extensions().get::<Peer>().map_or(IpAddr::from([0, 0, 0, 0]), |p| p.0);
    let open = !api.config().api.metrics_auth;
    if !open && !logged_in(&api, req.headers()) && !basic_login(&api, req.headers(), ip).await {
        let challenge = [(header::WWW_AUTHENTICATE, "Basic realm=\"dropseed\"")];
        return (StatusCode::UNAUTHORIZED, challenge, "Unauthorized").into_response();
    }
    let text = crate::metrics::render(&api.session).await;
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response()
}

/// HTTP Basic with the API's user name and password, under the login
/// throttle. A scraper sends the same header every few seconds: once one
/// passed, its digest is kept so the next ones cost no key derivation.
async fn basic_login(api: &Api, headers: &HeaderMap, ip: IpAddr) -> bool {
    let Some(value) = text(headers, header::AUTHORIZATION).and_then(|v| v.strip_prefix("Basic ")) else {
        return false;
    };
    let digest = auth::key_digest(value.trim());
    if api.basic_passed().as_deref().is_some_and(|d| auth::same(d, &digest)) {
        return true;
    }
    if let Gate::Banned(_) = api.throttle().gate(ip, Instant::now()) {
        return false;
    }
    // A header that is no `user:password` is no guess: refused without
    // counting (and without growing the throttle at no cost).
    let Some((user, password)) = auth::basic_credentials(value) else {
        return false;
    };
    let _slot = api.checks.acquire().await.expect("never closed");
    // Checked again with the slot held, as in `login`.
    if let Gate::Banned(_) = api.throttle().gate(ip, Instant::now()) {
        return false;
    }
    let (username, phc) = api.credentials();
    let good = tokio::task::spawn_blocking(move || auth::verify_password(&phc, &password)).await.unwrap_or(false);
    if user != username || !good {
        api.throttle().failed(ip, Instant::now());
        return false;
    }
    api.throttle().succeeded(ip);
    *api.basic_passed() = Some(digest);
    true
}

async fn logout(State(api): State<Arc<Api>>, headers: HeaderMap) -> Response {
    if let Some(id) = sid(&headers) {
        api.sessions().close(id);
    }
    "Ok.".into_response()
}

/// A request refused before its handler ran: a status and its text.
#[derive(Debug)]
pub struct Refusal(pub StatusCode, pub String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, self.1).into_response()
    }
}

/// A request's parameters: the query string, and a urlencoded body's
/// fields (bounded in bytes by the body limit and in number by [`MAX_FIELDS`]).
#[derive(Debug, Default)]
pub struct Params(HashMap<String, String>);

impl Params {
    pub fn get(&self, key: &str) -> &str {
        self.0.get(key).map_or("", String::as_str)
    }

    pub fn opt(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), "true" | "True" | "1")
    }

    fn insert_all(&mut self, pairs: Vec<(String, String)>) -> Result<(), Refusal> {
        if pairs.len() + self.0.len() > MAX_FIELDS {
            return Err(Refusal(StatusCode::PAYLOAD_TOO_LARGE, "Too many fields".into()));
        }
        self.0.extend(pairs);
        Ok(())
    }

    pub fn from_pairs(pairs: Vec<(String, String)>) -> Result<Params, Refusal> {
        let mut p = Params::default();
        p.insert_all(pairs)?;
        Ok(p)
    }
}

impl<S: Send + Sync> FromRequest<S> for Params {
    type Rejection = Refusal;

    async fn from_request(req: Request, state: &S) -> Result<Params, Refusal> {
        let query = req.uri().query().unwrap_or("").to_string();
        let mut params = Params::from_pairs(parse_pairs(&query))?;
        let is_form = text(req.headers(), header::CONTENT_TYPE)
            .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
        if is_form {
            let body =
                axum::body::Bytes::from_request(req, state).await.map_err(|e| Refusal(e.status(), e.body_text()))?;
            params.insert_all(parse_pairs(&String::from_utf8_lossy(&body)))?;
        }
        Ok(params)
    }
}

/// `a=1&b=2` into pairs; at most [`MAX_FIELDS`] + 1 are kept, which is
/// enough to refuse the form.
pub fn parse_pairs(s: &str) -> Vec<(String, String)> {
    let decode = |v: &str| percent_encoding::percent_decode_str(&v.replace('+', " ")).decode_utf8_lossy().into_owned();
    s.split('&')
        .filter(|p| !p.is_empty())
        .take(MAX_FIELDS + 1)
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// `hashes=a|b|all` as lowercase hashes; None for `all`.
pub fn hash_list(s: &str) -> Option<Vec<String>> {
    if s == "all" {
        return None;
    }
    // Each once: `H|H` is one request for H, not two racing each other.
    let mut seen = std::collections::HashSet::new();
    Some(
        s.split('|')
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty() && seen.insert(h.clone()))
            .take(10_000)
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode_and_stay_bounded() {
        let p = parse_pairs("username=ad%20min&password=a+b&x");
        assert_eq!(
            p,
            [("username".into(), "ad min".into()), ("password".into(), "a b".into()), ("x".into(), String::new())]
        );
        let many = "a=1&".repeat(10_000);
        assert_eq!(parse_pairs(&many).len(), MAX_FIELDS + 1);
        assert!(Params::from_pairs(parse_pairs(&many)).is_err());
    }

    #[test]
    fn the_config_names_the_missing_password_hash() {
        let mut c = Config::default();
        c.api.listen = "127.0.0.1:8080".into();
        assert_eq!(c.validate().unwrap_err().0, "api.password_hash");
        c.api.password_hash = "plaintext".into();
        assert_eq!(c.validate().unwrap_err().0, "api.password_hash");
        c.api.password_hash = auth::hash_password("pw");
        assert!(c.validate().is_ok());
        c.api.listen = "localhost".into();
        assert_eq!(c.validate().unwrap_err().0, "api.listen");
        assert!(Config::default().validate().is_ok(), "off by default, no hash needed");
    }

    #[test]
    fn only_torrents_add_takes_large_bodies() {
        assert_eq!(body_limit("/api/v2/torrents/add"), ADD_LIMIT);
        assert_eq!(body_limit("/api/v2/auth/login"), FORM_LIMIT);
    }

    #[test]
    fn an_address_holds_its_share_of_connections_and_gives_them_back() {
        let per = Arc::new(PerAddress::default());
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8::2".parse().unwrap();
        let mut held: Vec<AddressSlot> = (0..MAX_PER_ADDRESS).map(|_| per.take(a).unwrap()).collect();
        assert!(per.take(same_64).is_none(), "a /64 is one address");
        assert!(per.take("192.0.2.1".parse().unwrap()).is_some(), "another address has its own share");
        held.pop();
        assert!(per.take(a).is_some(), "a closed connection gives its place back");
        held.clear();
        assert!(per.0.lock().unwrap().is_empty(), "addresses with nothing held are forgotten");
    }

    #[test]
    fn hash_lists() {
        assert_eq!(hash_list("all"), None);
        assert_eq!(hash_list("AB|cd||"), Some(vec!["ab".into(), "cd".into()]));
        assert_eq!(hash_list("ab|AB|cd|ab"), Some(vec!["ab".into(), "cd".into()]), "each once");
    }
}
