//! `warden inject --help`: the contract of the injector, in one place.

pub(crate) const LONG_ABOUT: &str = "\
Adds the Warden sidecar to the workloads in Kubernetes manifests and writes them to stdout,
or (--serve) does the same to pods as a mutating admission webhook.

Workloads: Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, ReplicationController, Job,
CronJob (spec.jobTemplate) and the items of a `kind: List`; a file may hold many documents.

TRAFFIC CAPTURE (the default). Each pod gets:
  - init container `warden-init`, an ordinary init container placed before the sidecar, so it
    has finished before anything else starts: runs `warden init` (iptables: every inbound TCP
    connection except the metrics port to the sidecar's port 15006, every outbound one of
    another uid than 1337, except loopback, to port 15001) as root with capabilities NET_ADMIN
    and NET_RAW only (all others dropped), no privilege escalation, a read-only root
    filesystem, and a small memory volume `warden-xtables` at /run for iptables' lock. Its
    image must hold iptables: --init-image, default the --image with `-init` added to its
    name (the Dockerfile's `init` target). The namespace's Pod Security level must allow
    NET_ADMIN (privileged).
  - the `warden` sidecar as a native sidecar (an init container with restartPolicy: Always, so
    it starts before the app and does not keep a Job from finishing; Kubernetes 1.29+), running
    `warden sidecar --config /etc/warden/sidecar.toml` as uid 1337 (the proxy uid: its own
    connections are not captured; an app container running as 1337 is refused), non-root, on
    a read-only root filesystem, with CPU/memory requests, startup/liveness probes on /healthz
    and a readiness probe on /readyz of the metrics port (container port `warden-metrics`),
    and SPIFFE_ENDPOINT_SOCKET set;
  - its config: with annotation warden.dev/config-map, that ConfigMap (key sidecar.toml).
    Otherwise warden inject writes it into the pod annotation warden.dev/sidecar-config,
    mounted at /etc/warden through the downward API (the webhook cannot create ConfigMaps, and
    the CLI and the webhook give the same pod): trust_domain (--trust-domain, required then),
    [identity] source = \"workload-api\", [policy] control_plane (--control-plane,
    --control-plane-id; without it the static allowlists are empty: everything is denied),
    [capture] inbound = \"0.0.0.0:15006\", outbound = \"127.0.0.1:15001\", one [[inbound]] per
    TCP containerPort of the app containers (name: the port's name, or port-<n>; port: the
    containerPort; the app is reached on 127.0.0.1:<port>), [admin] metrics_listen, and the
    [[app_probe]] entries below. It has no [[outbound]] or [[egress]]: captured outbound
    connections are refused until you name your own ConfigMap that lists them. A pod with no
    TCP containerPort is refused (its generated config would have no listener).
    Your own sidecar.toml (warden.dev/config-map) must hold: [capture] with those two
    addresses, an [[inbound]] with `port` for every port peers call, [[outbound]] with
    `destinations` (and [[egress]]) for every call the app makes, [admin] metrics_listen =
    \"0.0.0.0:<metrics-port>\", and the [[app_probe]] entries of annotation
    warden.dev/app-probes (warden inject warns when there are some).
  - the app's probes: an httpGet or tcpSocket probe (liveness, readiness, startup) of a
    captured port (named ports resolved) would reach the sidecar's mTLS listener and fail, so
    it is rewritten, as Istio does, to an httpGet on the metrics port with path
    /app-health/<container>/<livez|readyz|startupz>; the sidecar runs the original check
    against 127.0.0.1:<port> and answers with the app's status (503 when the app is down).
    The originals are kept in annotation warden.dev/app-probes as [[app_probe]] entries and
    put back by a later run. Left as they are: exec probes (they run inside the container),
    probes with `host`, probes of a skipped port, and HTTPS and gRPC probes, which fail on a
    captured port (warden inject warns: use HTTP or exec, or skip the port).
Pod template annotations (a bare Pod: its own) for capture:
  warden.dev/capture: \"false\"            explicit mode, below
  warden.dev/skip-inbound-ports: \"9090\"  not captured (plaintext from anywhere: use with care)
  warden.dev/skip-outbound-ports: \"5432\" outbound ports not captured
  warden.dev/skip-outbound-cidrs: \"10.96.0.1/32\"  outbound blocks not captured (e.g. the API
                                         server, which a captured pod cannot reach otherwise)
  warden.dev/outbound: |                 the services the pod calls, one per line: NAME
    retriever retriever.rag.svc:8080 spiffe://example.org/ns/rag/sa/retriever
                                         HOST:PORT[,HOST:PORT...] SERVER_ID; each becomes an
                                         [[outbound]] with destinations (without it, every
                                         captured outbound connection is refused as
                                         unknown_destination)
  warden.dev/egress: \"llm-api api.llm.example 443\"  TLS to hosts outside the mesh, let
                                         through by SNI: NAME HOST[,HOST...] PORT[,PORT...]
Refused under capture: hostNetwork pods; warden.dev/inbound-port; app ports 15001, 15006,
15000 (the sidecar binds them).

EXPLICIT MODE (warden.dev/capture: \"false\", as before capture): no init container; the
sidecar runs as 65532 with an inbound listener port (container port `warden-inbound`) that
peers dial, and the app dials loopback outbound listeners. Its config is the ConfigMap
warden.dev/config-map (default <workload name>-warden), which the user writes; probes are
not changed. The skip annotations are refused in this mode.

Annotations of both modes:
  warden.dev/inject: \"false\"         leave this workload alone (also as a pod label, which the
                                      webhook's objectSelector honours)
  warden.dev/inbound-port: \"8443\"    explicit mode: the sidecar's inbound listener port, or \"none\"
  warden.dev/metrics-port: \"15020\"   the metrics-only listener: probes and Prometheus
  warden.dev/config-map: NAME         the ConfigMap holding sidecar.toml
  warden.dev/admin-port               no longer accepted: refused with an error, because it
                                      named the port of the whole admin server on the pod IP;
                                      use warden.dev/metrics-port
Every pod also gets the volumes `warden-workload-api` (the SPIFFE CSI driver csi.spiffe.io,
read-only, at /spiffe-workload-api) and `warden-data` (emptyDir for the policy cache), the
annotation warden.dev/injected: \"true\", and prometheus.io/scrape, /port (the metrics port),
/path (/metrics) unless prometheus.io/scrape is already set.
The sidecar's TOML must agree: under [admin] metrics_listen = \"0.0.0.0:<metrics-port>\" (the
kubelet and Prometheus reach the pod IP; that listener serves only /metrics, /healthz,
/readyz and the /app-health probes). Keep [admin] listen on loopback (127.0.0.1:15000, the
default): the debug views are not exposed by the pod, reach them with `kubectl port-forward`
or `kubectl exec`. That port is still taken in the pod's network namespace, so the app must
not use it.

What is preserved:
  - A document that needs no change is copied byte for byte, comments and layout included:
    documents of other kinds (and workload kinds of other API groups), opted-out
    workloads, already injected workloads given the same options, comment-only documents.
  - In a document that gains a sidecar, every key and value, the order of the keys in
    every mapping and the order of every list are kept; new keys go at the end of their
    mapping (a missing pod template `metadata` goes first). Comments, anchors and aliases
    (expanded), flow style (becomes block style), quoting and number spelling (0x1F becomes
    31) are not kept: scalars are re-quoted so that Kubernetes reads the same types.
    Input is read as YAML 1.2: an unquoted yes/no/on/off is kept as written.
  - Idempotent: running it on its own output gives the same output. A workload marked
    warden.dev/injected has its containers, volumes, generated config and probes re-rendered
    in place, so a new --image updates it and the same options change nothing. A
    prometheus.io/port that names a port of that earlier sidecar (such as warden-admin, the
    public admin port of earlier versions) is moved to the metrics port.

Refused, with a non-zero exit and nothing written: a YAML syntax error (the message names the
document and the line); a workload without containers; a container or volume named like
Warden's that warden inject did not add; a port clash with the app's containers. Warnings
(the workload is still injected) go to stderr.

WEBHOOK (--serve --listen ADDR --tls-dir DIR): HTTPS (TLS 1.3, tls.crt and tls.key from DIR,
re-read when they change), POST /inject with an AdmissionReview (admission.k8s.io/v1) of a Pod
CREATE; the answer has response.uid = request.uid and, when the pod changes, patchType
JSONPatch and an RFC 6902 patch that makes the pod exactly what the CLI makes of it (same
flags). Pods are not given names by the time they are admitted, so in explicit mode a pod
needs warden.dev/config-map. A pod the injector refuses is answered allowed: false with the
reason (a pod in an injected namespace must not run without its sidecar); other kinds and
operations are allowed unchanged. A body that is not an AdmissionReview v1 with a
request.uid (not JSON, another apiVersion or kind, over 1 MiB) gets HTTP 400 (413 when too
large) with a JSON {\"error\": ...}; the API server then applies the webhook's
failurePolicy. GET /healthz answers 200. deploy/kubernetes/webhook has its Deployment,
Service and MutatingWebhookConfiguration (namespaces labelled warden.dev/inject=enabled).";
