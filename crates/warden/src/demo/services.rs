//! The demo's RAG chain, as four tiny plaintext HTTP services. Each knows only the local
//! address of its own sidecar's outbound listener: identity and encryption are Warden's job.
//!
//! app --/retrieve--> retriever --/search--> vectordb --/embed--> llm

use std::net::SocketAddr;

use super::http::{self, Request, encode};

const CORPUS: &[&str] = &[
    "Zero trust: verify every request, never trust the network location.",
    "SPIFFE gives each workload a cryptographic identity (an SVID).",
    "Mutual TLS proves both ends of a connection to each other.",
    "Default deny: a peer not on the allowlist never reaches the application.",
    "Revocation closes live connections the moment policy changes.",
];

/// llm: turns text into a (toy) embedding.
pub async fn llm() -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    http::serve(|req: Request| async move {
        match req.query("text") {
            Some(text) => (200, embed(&text)),
            None => (400, "missing ?text=".into()),
        }
    })
    .await
}

fn embed(text: &str) -> String {
    // FNV-1a over the words: deterministic, and similar texts share components.
    let mut dims = [0u32; 4];
    for word in text.split_whitespace() {
        let mut h: u32 = 0x811c_9dc5;
        for b in word.to_lowercase().bytes() {
            h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
        dims[(h % 4) as usize] += 1 + (h >> 28);
    }
    let norm = dims
        .iter()
        .map(|d| f64::from(*d).powi(2))
        .sum::<f64>()
        .sqrt()
        .max(1.0);
    let parts: Vec<String> = dims
        .iter()
        .map(|d| format!("{:.3}", f64::from(*d) / norm))
        .collect();
    format!("[{}]", parts.join(","))
}

/// vectordb: embeds the query through the LLM, then returns the closest documents.
pub async fn vectordb(
    llm_out: SocketAddr,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    http::serve(move |req: Request| async move {
        let Some(q) = req.query("q") else {
            return (400, "missing ?q=".into());
        };
        let embedding = match http::get(llm_out, &format!("/embed?text={}", encode(&q))).await {
            Ok((200, body)) => body,
            Ok((status, body)) => return (502, format!("llm answered {status}: {body}")),
            Err(e) => return (502, format!("llm unreachable: {e}")),
        };
        let words: Vec<String> = q.split_whitespace().map(|w| w.to_lowercase()).collect();
        let mut scored: Vec<(usize, &str)> = CORPUS
            .iter()
            .map(|doc| {
                let lower = doc.to_lowercase();
                (
                    words
                        .iter()
                        .filter(|w| w.len() > 2 && lower.contains(w.as_str()))
                        .count(),
                    *doc,
                )
            })
            .collect();
        scored.sort_by_key(|s| std::cmp::Reverse(s.0));
        let docs: Vec<&str> = scored.iter().take(2).map(|(_, d)| *d).collect();
        (200, format!("embedding={embedding}\n{}", docs.join("\n")))
    })
    .await
}

/// Documents by department, served by the retriever under `/docs/<department>/`. Who may
/// read which is not the retriever's code: its sidecar's routes decide, per end user.
const DOCUMENTS: &[(&str, &str)] = &[
    (
        "finance",
        "Q3 revenue 41.2 M, margin 18 %; forecast withheld until the board meets.",
    ),
    (
        "marketing",
        "Spring campaign: three launches, one shared keynote.",
    ),
];

/// retriever: asks the vector DB for context; serves department documents.
pub async fn retriever(
    vectordb_out: SocketAddr,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    http::serve(move |req: Request| async move {
        if let Some(rest) = req.path.strip_prefix("/docs/") {
            let dept = rest.split('/').next().unwrap_or_default();
            return match DOCUMENTS.iter().find(|(d, _)| *d == dept) {
                Some((_, doc)) => (200, (*doc).to_owned()),
                None => (404, "no such department".into()),
            };
        }
        let Some(q) = req.query("q") else {
            return (400, "missing ?q=".into());
        };
        match http::get(vectordb_out, &format!("/search?q={}", encode(&q))).await {
            Ok((200, body)) => (200, body),
            Ok((status, body)) => (502, format!("vectordb answered {status}: {body}")),
            Err(e) => (502, format!("vectordb unreachable: {e}")),
        }
    })
    .await
}

/// app: the user-facing service; answers a question with retrieved context.
pub async fn app(
    retriever_out: SocketAddr,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    http::serve(move |req: Request| async move {
        // A user's document request: the app passes the user's token along, and the
        // retriever's sidecar decides; the app only relays the answer.
        if let Some(dept) = req.query("dept") {
            let path = format!("/docs/{}/q3-report", encode(&dept));
            return match http::get_as(retriever_out, &path, req.authorization.as_deref()).await {
                Ok((status, body)) => (status, body),
                Err(e) => (502, format!("retriever unreachable: {e}")),
            };
        }
        let Some(q) = req.query("q") else {
            return (400, "missing ?q=".into());
        };
        match http::get(retriever_out, &format!("/retrieve?q={}", encode(&q))).await {
            Ok((200, context)) => {
                let docs: Vec<&str> = context.lines().skip(1).collect();
                (200, format!("Q: {q}\nA: {}", docs.join(" ")))
            }
            Ok((status, body)) => (502, format!("retriever answered {status}: {body}")),
            Err(e) => (502, format!("retriever unreachable: {e}")),
        }
    })
    .await
}
