//! How requests prove who they are: an inbound webhook (the code in the URL path) or an OAuth app (an access
//! token in the body, refreshed once on 401 `expired_token`; the refresh token rotates and the new pair is
//! persisted atomically where the user asked). Both follow a portal that moved to a new domain.

use std::fmt;
use std::path::PathBuf;
use std::sync::RwLock;

use serde_json::{Map, Value};
use url::Url;

use crate::error::{Error, PortalError};
use crate::secret::{is_loopback_host, redact, register_secret, Webhook};

/// OAuth credentials of an app.
#[derive(Clone)]
pub struct OAuthConfig {
    /// `https://<portal>/rest/`
    pub portal: Url,
    pub access_token: String,
    pub refresh_token: String,
    pub client_id: String,
    pub client_secret: String,
    /// Where the rotated token pair is kept (`{"access_token": …, "refresh_token": …}`), if anywhere.
    pub token_file: Option<PathBuf>,
    /// The token server (`https://oauth.bitrix.info`).
    pub server: Url,
}

/// Either way in.
#[derive(Clone)]
pub enum AuthConfig {
    Webhook(Webhook),
    OAuth(OAuthConfig),
}

impl fmt::Display for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthConfig::Webhook(w) => write!(f, "{w}"),
            AuthConfig::OAuth(o) => write!(f, "{} (OAuth app)", o.portal),
        }
    }
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuthConfig({self})")
    }
}

/// Checks a portal or server URL: https, or http only to loopback.
pub fn check_url(raw: &str, what: &str) -> Result<Url, Error> {
    let url = Url::parse(raw.trim()).map_err(|e| Error::Usage(format!("malformed {what} URL ({e}); expected https://<host>/")))?;
    let host = url.host().ok_or_else(|| Error::Usage(format!("{what} URL has no host")))?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback_host(&host) => Ok(url),
        "http" => Err(Error::Usage(format!("refusing plain http:// to {host} for the {what}: tokens would travel unencrypted; use https://"))),
        other => Err(Error::Usage(format!("{what} URL scheme {other:?} is not supported; use https://"))),
    }
}

impl OAuthConfig {
    /// Reads the token pair from `token_file` when it exists (it holds the latest rotation), else uses the
    /// given ones. Registers every secret for redaction.
    pub fn new(
        portal: &str,
        access: Option<String>,
        refresh: Option<String>,
        client_id: Option<String>,
        client_secret: Option<String>,
        token_file: Option<PathBuf>,
        server: &str,
    ) -> Result<Self, Error> {
        let mut portal = check_url(portal, "portal")?;
        portal.set_path("/rest/");
        portal.set_query(None);
        let server = check_url(server, "OAuth server")?;
        let (mut access, mut refresh) = (access.unwrap_or_default(), refresh.unwrap_or_default());
        if let Some(path) = &token_file {
            if path.exists() {
                let text = std::fs::read_to_string(path).map_err(|e| Error::Usage(format!("cannot read --token-file {}: {e}", path.display())))?;
                let v: Value = serde_json::from_str(&text)
                    .map_err(|_| Error::Usage(format!("--token-file {} is not a JSON object with access_token and refresh_token", path.display())))?;
                access = v.get("access_token").and_then(Value::as_str).unwrap_or_default().to_string();
                refresh = v.get("refresh_token").and_then(Value::as_str).unwrap_or_default().to_string();
            }
        }
        if access.is_empty() {
            return Err(Error::Usage("--portal needs an access token: set B24_ACCESS_TOKEN (or a --token-file that holds one)".into()));
        }
        let (client_id, client_secret) = (client_id.unwrap_or_default(), client_secret.unwrap_or_default());
        for s in [&access, &refresh, &client_secret] {
            register_secret(s);
        }
        Ok(OAuthConfig { portal, access_token: access, refresh_token: refresh, client_id, client_secret, token_file, server })
    }
}

/// The live state: the current base URL (it moves with a domain change) and, for OAuth, the current tokens.
pub struct Auth {
    cfg: AuthConfig,
    state: RwLock<AuthState>,
    /// Held while a refresh is under way: the refresh token rotates, so only one request may use it.
    refreshing: tokio::sync::Mutex<()>,
}

struct AuthState {
    webhook: Option<Webhook>,
    portal: Option<Url>,
    access: String,
    refresh: String,
    /// Bumped by every refresh, so concurrent requests that met the same expiry refresh only once.
    generation: u64,
}

impl Auth {
    pub fn new(cfg: AuthConfig) -> Self {
        let state = match &cfg {
            AuthConfig::Webhook(w) => AuthState { webhook: Some(w.clone()), portal: None, access: String::new(), refresh: String::new(), generation: 0 },
            AuthConfig::OAuth(o) => AuthState {
                webhook: None,
                portal: Some(o.portal.clone()),
                access: o.access_token.clone(),
                refresh: o.refresh_token.clone(),
                generation: 0,
            },
        };
        Auth { cfg, state: RwLock::new(state), refreshing: tokio::sync::Mutex::new(()) }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, AuthState> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_oauth(&self) -> bool {
        matches!(self.cfg, AuthConfig::OAuth(_))
    }

    /// What to show in logs: the portal, never a secret.
    pub fn display(&self) -> String {
        let st = self.read();
        match (&st.webhook, &st.portal) {
            (Some(w), _) => w.to_string(),
            (_, Some(p)) => format!("{p} (OAuth app)"),
            _ => "?".into(),
        }
    }

    /// The current token generation (bumped by every refresh).
    pub fn generation(&self) -> u64 {
        self.read().generation
    }

    /// The URL and JSON body of a call; the token generation it was made with.
    pub fn request(&self, method: &str, params: &Value) -> (Url, Vec<u8>, u64) {
        let st = self.read();
        match (&st.webhook, &st.portal) {
            (Some(w), _) => (w.method_url(method), serde_json::to_vec(params).expect("serializable"), st.generation),
            (_, Some(p)) => {
                let mut body = match params {
                    Value::Object(m) => m.clone(),
                    _ => Map::new(),
                };
                body.insert("auth".into(), Value::String(st.access.clone()));
                let url = p.join(method).expect("method names are valid URL segments");
                (url, serde_json::to_vec(&Value::Object(body)).expect("serializable"), st.generation)
            }
            _ => unreachable!("one way in"),
        }
    }

    /// The portal answered a redirect to `location`: move there when it is safe (https, or http on loopback).
    pub fn follow(&self, location: &str) -> Result<String, PortalError> {
        let refuse = |why: String| PortalError::Protocol { method: "-".into(), status: 302, message: why };
        let to = Url::parse(location).map_err(|_| refuse("the portal redirects to an unreadable address".into()))?;
        let host = to.host().ok_or_else(|| refuse("the portal redirects to an address without a host".into()))?;
        if !(to.scheme() == "https" || (to.scheme() == "http" && is_loopback_host(&host))) {
            return Err(refuse(format!("the portal redirects to {host} over plain http; refusing to send credentials there")));
        }
        let current = {
            let st = self.read();
            st.webhook.as_ref().map(|w| w.host()).or_else(|| st.portal.as_ref().and_then(|p| p.host_str().map(str::to_string))).unwrap_or_default()
        };
        if !is_loopback_host(&host) && site(&current) != site(&host.to_string()) {
            return Err(refuse(format!(
                "the portal redirects to {host}, outside {}; not sending credentials there — if the portal really moved, use the new address",
                site(&current)
            )));
        }
        let shown = match to.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        };
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = &st.webhook {
            st.webhook = Some(w.moved_to(&to));
        }
        if let Some(p) = &mut st.portal {
            let _ = p.set_scheme(to.scheme());
            let _ = p.set_host(to.host_str());
            let _ = p.set_port(to.port());
        }
        Ok(shown)
    }

    /// Refreshes the OAuth tokens after a 401 `expired_token` seen by a request of `generation`. Returns false
    /// when this is not an OAuth session. A request that saw an older generation just retries with the new token.
    pub async fn refresh(&self, http: &reqwest::Client, generation: u64) -> Result<bool, PortalError> {
        let AuthConfig::OAuth(cfg) = &self.cfg else { return Ok(false) };
        let _one_at_a_time = self.refreshing.lock().await;
        let refresh = {
            let st = self.read();
            if st.generation != generation {
                return Ok(true); // someone else refreshed already
            }
            st.refresh.clone()
        };
        let fail = |description: String| PortalError::Auth { method: "oauth/token".into(), status: 401, code: "expired_token".into(), description };
        if refresh.is_empty() || cfg.client_id.is_empty() || cfg.client_secret.is_empty() {
            return Err(fail("the access token expired and cannot be refreshed: set B24_REFRESH_TOKEN, B24_CLIENT_ID and B24_CLIENT_SECRET".into()));
        }
        let mut url = cfg.server.join("/oauth/token/").expect("valid path");
        url.query_pairs_mut()
            .append_pair("grant_type", "refresh_token")
            .append_pair("client_id", &cfg.client_id)
            .append_pair("client_secret", &cfg.client_secret)
            .append_pair("refresh_token", &refresh);
        let resp = http.get(url).send().await.map_err(|e| fail(format!("token refresh failed: {}", redact(&e.without_url().to_string()))))?;
        let status = resp.status().as_u16();
        let v: Value = resp.json_value().await.map_err(|e| fail(format!("token refresh answered HTTP {status} with an unreadable body: {e}")))?;
        let (Some(access), Some(new_refresh)) = (v.get("access_token").and_then(Value::as_str), v.get("refresh_token").and_then(Value::as_str)) else {
            let code = v.get("error").and_then(Value::as_str).unwrap_or("?");
            let desc = v.get("error_description").and_then(Value::as_str).unwrap_or("");
            return Err(fail(format!("token refresh refused: {code} ({desc}); the app must be authorized again")));
        };
        register_secret(access);
        register_secret(new_refresh);
        {
            // under the refresh lock nobody else can have moved the generation on
            let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
            st.access = access.to_string();
            st.refresh = new_refresh.to_string();
            st.generation += 1;
        }
        if let Some(path) = &cfg.token_file {
            persist_tokens(path, access, new_refresh).map_err(|e| fail(format!("refreshed, but could not save the new tokens to {}: {e}", path.display())))?;
        }
        tracing::info!("access token refreshed{}", cfg.token_file.as_ref().map(|p| format!("; new pair saved to {}", p.display())).unwrap_or_default());
        Ok(true)
    }
}

/// The site a host belongs to, by its last two labels (`old.bitrix24.com` → `bitrix24.com`).
fn site(host: &str) -> String {
    let labels: Vec<&str> = host.trim_end_matches('.').rsplit('.').take(2).collect();
    labels.into_iter().rev().collect::<Vec<_>>().join(".").to_ascii_lowercase()
}

/// Writes the token pair atomically (a new, uniquely named file renamed over the old one), readable by the
/// owner only.
fn persist_tokens(path: &std::path::Path, access: &str, refresh: &str) -> std::io::Result<()> {
    use std::io::Write;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "tokens".into());
    let tmp = path.with_file_name(format!(".{name}.{}.{:08x}.tmp", std::process::id(), fastrand::u32(..)));
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&tmp)?;
        f.write_all(serde_json::json!({"access_token": access, "refresh_token": refresh}).to_string().as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

trait JsonValue {
    async fn json_value(self) -> Result<Value, String>;
}

impl JsonValue for reqwest::Response {
    async fn json_value(self) -> Result<Value, String> {
        let bytes = self.bytes().await.map_err(|e| e.without_url().to_string())?;
        serde_json::from_slice(&bytes).map_err(|e| e.to_string())
    }
}
