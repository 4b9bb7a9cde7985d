//! Credentials and their redaction.
//!
//! The webhook code is a password: it is kept in a [`Webhook`] whose `Display`/`Debug` never show it, and every
//! message that leaves the process (errors, logs, panics) is additionally passed through [`redact`], which
//! replaces any registered secret with `***`.

use std::fmt;
use std::net::IpAddr;
use std::sync::RwLock;

use url::Url;

use crate::error::Error;

static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Registers a secret so that [`redact`] hides it from now on.
pub fn register_secret(secret: &str) {
    if secret.len() < 3 {
        return; // too short to redact without mangling ordinary text
    }
    let mut guard = SECRETS.write().unwrap_or_else(|e| e.into_inner());
    if !guard.iter().any(|s| s == secret) {
        guard.push(secret.to_string());
    }
}

/// Replaces every registered secret in `text` with `***`.
pub fn redact(text: &str) -> String {
    let guard = SECRETS.read().unwrap_or_else(|e| e.into_inner());
    let mut out = text.to_string();
    for s in guard.iter() {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), "***");
        }
    }
    out
}

/// Registers anything that looks like a webhook code in `text` (`…/rest/<user id>/<code>…`), so that even text
/// we never parsed — a mistyped command line echoed by the argument parser — is redacted.
pub fn register_codes_in(text: &str) {
    let mut rest = text;
    while let Some(i) = rest.find("/rest/") {
        rest = &rest[i + 6..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || rest.as_bytes().get(digits) != Some(&b'/') {
            continue;
        }
        let code: String = rest[digits + 1..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-').collect();
        register_secret(&code);
    }
}

/// Installs a panic hook that redacts secrets from panic messages.
pub fn install_panic_redaction() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(non-string panic payload)".into());
        let loc = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        eprintln!("b24-export panicked{loc}: {}", redact(&payload));
    }));
}

/// True for `localhost`, 127.0.0.0/8 and `::1`.
pub fn is_loopback_host(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(ip) => IpAddr::V4(*ip).is_loopback(),
        url::Host::Ipv6(ip) => IpAddr::V6(*ip).is_loopback(),
    }
}

/// An inbound webhook: `https://<portal>/rest/<user>/<code>/`.
#[derive(Clone)]
pub struct Webhook {
    /// `https://<portal>/rest/<user>/` — safe to show.
    base: Url,
    code: String,
}

impl Webhook {
    /// Parses and validates a webhook URL. Refuses plain `http://` unless the host is loopback.
    /// The error messages never contain the code.
    pub fn parse(raw: &str) -> Result<Self, Error> {
        let raw = raw.trim();
        let url = Url::parse(raw).map_err(|e| {
            Error::Usage(format!(
                "malformed webhook URL ({e}); expected https://<portal>/rest/<user id>/<code>/"
            ))
        })?;
        let host = url
            .host()
            .ok_or_else(|| Error::Usage("webhook URL has no host; expected https://<portal>/rest/<user id>/<code>/".into()))?;
        match url.scheme() {
            "https" => {}
            "http" if is_loopback_host(&host) => {}
            "http" => {
                return Err(Error::Usage(format!(
                    "refusing plain http:// to {host}: the webhook code would travel unencrypted; use https:// \
                     (http:// is accepted only for loopback addresses such as the simulated portal)"
                )))
            }
            other => return Err(Error::Usage(format!("webhook URL scheme {other:?} is not supported; use https://"))),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Error::Usage(
                "webhook URL must not carry a user name or password before the host; expected https://<portal>/rest/<user id>/<code>/".into(),
            ));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(Error::Usage(
                "webhook URL must not carry a query or fragment; expected https://<portal>/rest/<user id>/<code>/".into(),
            ));
        }
        let segs: Vec<&str> = url.path_segments().map(|s| s.filter(|p| !p.is_empty()).collect()).unwrap_or_default();
        if segs.len() != 3 || segs[0] != "rest" {
            return Err(Error::Usage(
                "webhook URL path must be /rest/<user id>/<code>/ (copy it from Bitrix24: Developer resources → Inbound webhook)".into(),
            ));
        }
        if segs[1].is_empty() || !segs[1].bytes().all(|b| b.is_ascii_digit()) {
            return Err(Error::Usage("webhook URL: the user id after /rest/ must be a number".into()));
        }
        let code = segs[2].to_string();
        if !code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            return Err(Error::Usage("webhook URL: the webhook code has unexpected characters".into()));
        }
        register_secret(&code);
        let mut base = url.clone();
        base.set_path(&format!("/rest/{}/", segs[1]));
        Ok(Webhook { base, code })
    }

    /// The URL of a REST method. Never log or display it: it carries the code.
    pub fn method_url(&self, method: &str) -> Url {
        let mut u = self.base.clone();
        u.set_path(&format!("{}{}/{}", self.base.path(), self.code, method));
        u
    }

    /// The portal's host.
    pub fn host(&self) -> String {
        self.base.host_str().unwrap_or("").to_string()
    }

    /// The same webhook on the origin (scheme, host, port) of `to`, after the portal moved.
    pub fn moved_to(&self, to: &Url) -> Webhook {
        let mut base = self.base.clone();
        let _ = base.set_scheme(to.scheme());
        let _ = base.set_host(to.host_str());
        let _ = base.set_port(to.port());
        Webhook { base, code: self.code.clone() }
    }
}

impl fmt::Display for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}***/", self.base)
    }
}

impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Webhook({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_hides_code() {
        let w = Webhook::parse("https://example.bitrix24.com/rest/1/abcdef123456/").unwrap();
        assert_eq!(w.to_string(), "https://example.bitrix24.com/rest/1/***/");
        assert!(!format!("{w:?}").contains("abcdef123456"));
        assert_eq!(
            w.method_url("crm.lead.list").as_str(),
            "https://example.bitrix24.com/rest/1/abcdef123456/crm.lead.list"
        );
        assert_eq!(redact("x abcdef123456 y"), "x *** y");
    }

    #[test]
    fn refuses_plain_http_except_loopback() {
        let e = Webhook::parse("http://example.bitrix24.com/rest/1/secretcode77/").unwrap_err();
        assert!(matches!(e, Error::Usage(_)));
        assert!(!e.to_string().contains("secretcode77"));
        assert!(Webhook::parse("http://127.0.0.1:8080/rest/1/loopcode42/").is_ok());
        assert!(Webhook::parse("http://127.9.9.9:8080/rest/1/loopcode42/").is_ok());
        assert!(Webhook::parse("http://localhost/rest/1/loopcode42/").is_ok());
        assert!(Webhook::parse("http://[::1]:9/rest/1/loopcode42/").is_ok());
        assert!(Webhook::parse("http://10.0.0.1/rest/1/loopcode42/").is_err());
    }

    #[test]
    fn codes_in_free_text_are_registered() {
        register_codes_in("error: unexpected argument 'https://x.bitrix24.com/rest/12/zz9codefromargv/' found");
        assert_eq!(redact("saw zz9codefromargv here"), "saw *** here");
    }

    #[test]
    fn rejects_malformed() {
        for bad in ["not a url", "https://x.com/", "https://x.com/rest/abc/def/", "https://x.com/rest/1/", "ftp://x.com/rest/1/c/", "https://u:p@x.com/rest/1/code/"] {
            assert!(matches!(Webhook::parse(bad), Err(Error::Usage(_))), "{bad}");
        }
    }
}
