//! No secret is ever printed or written: the webhook code, OAuth tokens and the client secret are looked for in
//! the stdout, stderr and every file of export, schema, demo and the failure paths, with debug logging on.

mod common;

use std::process::Output;

use b24_export::sim::{Faults, OAuthConfig, SimConfig, SimPortal};
use common::*;

const CODE: &str = "canaryhookcode7731";
const ACCESS: &str = "canaryaccesstok5521";
const REFRESH: &str = "canaryrefreshtok6632";
const CLIENT_SECRET: &str = "canaryclientsecret8843";

struct Capture {
    bytes: Vec<u8>,
}

impl Capture {
    fn add(&mut self, o: &Output) {
        self.bytes.extend(&o.stdout);
        self.bytes.extend(&o.stderr);
    }

    fn add_dir(&mut self, dir: &std::path::Path) {
        if dir.exists() {
            self.bytes.extend(all_bytes_under(dir));
        }
    }
}

fn sim(cfg: SimConfig) -> SimPortal {
    start_sim(SimConfig {
        webhook_code: CODE.into(),
        oauth: Some(OAuthConfig {
            client_id: "app.77.88".into(),
            client_secret: CLIENT_SECRET.into(),
            access_token: ACCESS.into(),
            refresh_token: REFRESH.into(),
            token_requests: 3,
        }),
        ..cfg
    })
}

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = bin();
    c.args(args).env("B24_LOG", "debug").env_remove("B24_WEBHOOK_URL");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

#[test]
fn no_secret_appears_in_any_output_or_file() {
    let mut cap = Capture { bytes: Vec::new() };
    let root = tempdir("secrets");
    let good = sim(SimConfig { leads: 4_000, seed: 3, bad_values: true, ..SimConfig::default() });
    let url = good.webhook_url();
    let out = |name: &str| root.join(name).display().to_string();

    // export (with rejects and dictionaries written), webhook from the flag and from the environment
    let o = run(&["export", "--webhook", &url, "--out", &out("a")], &[]);
    assert_success(&o);
    cap.add(&o);
    let o = run(&["export", "--out", &out("b"), "--partition-by", "status_id"], &[("B24_WEBHOOK_URL", &url)]);
    assert_success(&o);
    cap.add(&o);
    // schema, both formats
    for format in ["table", "json"] {
        let o = run(&["schema", "--format", format], &[("B24_WEBHOOK_URL", &url)]);
        assert_success(&o);
        cap.add(&o);
    }
    // failure paths: strict stop, a portal that goes down, a wrong code, plain http, a mistyped flag, help
    cap.add(&run(&["export", "--webhook", &url, "--out", &out("c"), "--strict"], &[]));
    let down = sim(SimConfig { leads: 4_000, seed: 3, fail_after: Some(3), ..SimConfig::default() });
    cap.add(&run(&["export", "--webhook", &down.webhook_url(), "--out", &out("d"), "--max-retries", "1"], &[]));
    let overloaded = sim(SimConfig { leads: 100, faults: Faults { overload_after: Some(1), ..Faults::default() }, ..SimConfig::default() });
    cap.add(&run(&["export", "--webhook", &overloaded.webhook_url(), "--out", &out("e")], &[]));
    cap.add(&run(&["export", "--webhook", &url.replace(CODE, &format!("{CODE}x")), "--out", &out("f")], &[]));
    cap.add(&run(&["export", "--webhook", &format!("http://portal.example.com/rest/1/{CODE}/"), "--out", &out("g")], &[]));
    cap.add(&run(&["export", &format!("--web-hook={url}"), "--out", &out("h")], &[]));
    cap.add(&run(&["export", "--help"], &[("B24_WEBHOOK_URL", &url), ("B24_ACCESS_TOKEN", ACCESS)]));
    cap.add(&run(&["export", "--webhook", &url, "--portal", "https://x.bitrix24.com", "--out", &out("i")], &[]));

    // OAuth: refreshes along the way, then a refused refresh
    let portal = format!("http://{}", good.addr());
    let oauth_env = [("B24_ACCESS_TOKEN", ACCESS), ("B24_REFRESH_TOKEN", REFRESH), ("B24_CLIENT_ID", "app.77.88"), ("B24_CLIENT_SECRET", CLIENT_SECRET)];
    let token_file = root.join("tokens.json").display().to_string();
    let o = run(&["export", "--portal", &portal, "--oauth-server", &portal, "--token-file", &token_file, "--out", &out("j")], &oauth_env);
    assert_success(&o);
    cap.add(&o);
    let (access_now, refresh_now) = good.oauth_tokens().unwrap();
    let stale = [("B24_ACCESS_TOKEN", ACCESS), ("B24_REFRESH_TOKEN", REFRESH), ("B24_CLIENT_ID", "app.77.88"), ("B24_CLIENT_SECRET", CLIENT_SECRET)];
    cap.add(&run(&["export", "--portal", &portal, "--oauth-server", &portal, "--out", &out("k")], &stale));

    // the demo, on its own simulated portal
    let o = run(&["demo", "--leads", "2000", "--out", &out("demo")], &[]);
    assert_success(&o);
    cap.add(&o);

    for d in ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "demo"] {
        cap.add_dir(&root.join(d));
    }
    let demo_code = SimConfig::default().webhook_code;
    for secret in [CODE, ACCESS, REFRESH, CLIENT_SECRET, access_now.as_str(), refresh_now.as_str(), demo_code.as_str()] {
        assert!(!contains(&cap.bytes, secret), "{secret} appeared in an output or a file");
    }
    // and the capture is not empty: the runs did print and write
    assert!(cap.bytes.len() > 100_000, "captured only {} bytes", cap.bytes.len());
    assert!(contains(&cap.bytes, "***"), "redaction markers expected in the logs");
}
