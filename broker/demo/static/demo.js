// The demo partner page: mounts the vendor's SDK against token-broker the way we
// recommend integrating it, and writes down every step in the event log.
//
// What a partner's page needs is only three things, all below: a function that asks
// the partner's own backend for a session (getSession), AlternativeClient.create with
// baseUrl = the broker and onAccessTokenExpired = getSession, and a mounted component
// with its invoiceId. Everything else here is the demo's picker and log.

const config = JSON.parse(document.getElementById("demo-config").textContent);
const $ = (id) => document.getElementById(id);
const logList = $("event-log");
const started = performance.now();

let generation = 0; // a newer "Load checkout" makes older async work stale
let mounted = []; // SDK component instances currently mounted
let session = { expiresAt: null, renewals: 0 };

// ---- the event log -------------------------------------------------------------

// Every entry, also as data: window.demoEvents is what the browser test reads.
window.demoEvents = [];

function log(event, message, level = "info", data = {}) {
  window.demoEvents.push({ event, message, level, data, at: Date.now() });
  const item = document.createElement("li");
  item.dataset.event = event;
  item.className = level;
  const time = document.createElement("time");
  time.textContent = `${((performance.now() - started) / 1000).toFixed(1)} s`;
  const name = document.createElement("b");
  name.textContent = event.replaceAll("_", " ");
  const text = document.createElement("span");
  text.textContent = message;
  item.append(time, name, text);
  logList.append(item);
  logList.scrollTop = logList.scrollHeight; // the log scrolls, never the page
  console.info(`[demo] ${event}: ${message}`);
}

// ---- the partner backend call: the page's only source of session tokens --------

async function getSession(customerId, invoiceId, why) {
  const response = await fetch(config.sessionPath, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ customer_id: customerId, invoice_id: invoiceId }),
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const message = `the backend answered ${response.status}: ${body.message ?? "no message"}`;
    log("session_failed", message, "error");
    throw new Error(message);
  }
  session.expiresAt = body.expires_at;
  showSession(why === "renewal" ? "renewed" : "active");
  const seconds = Math.round(body.expires_at - Date.now() / 1000);
  // Never the token itself: it is a bearer credential, even if a short-lived one.
  log(
    why === "renewal" ? "token_renewed" : "session_fetched",
    `${why === "renewal" ? "new session" : "session"} for ${customerId} / ${invoiceId},` +
      ` valid ${seconds} s (token never shown)`,
  );
  return body.token;
}

// ---- session card --------------------------------------------------------------

function showSession(state) {
  $("session-state").textContent = state;
  $("session-renewals").textContent = String(session.renewals);
  tick();
}

function tick() {
  if (session.expiresAt === null) return;
  // The broker refuses a session from its `exp` second on (leeway aside): say "expired"
  // no earlier than that, and count the seconds left up, never down to a false 0.
  const left = Math.ceil(session.expiresAt - Date.now() / 1000);
  const at = new Date(session.expiresAt * 1000).toLocaleTimeString();
  $("session-expiry").textContent =
    left > 0 ? `${at} (in ${left} s)` : `${at} (expired: the next SDK call gets 401)`;
  $("session-expiry").classList.toggle("expired", left <= 0);
}
setInterval(tick, 1000);

// ---- mounting the SDK ----------------------------------------------------------

async function loadSdk() {
  try {
    // The bare name resolves through the page's import map (see page.html).
    return await import("@getalternative/partner-sdk");
  } catch (error) {
    log(
      "sdk_load_failed",
      `could not load the SDK from ${config.sdkUrl} (${error.message}); offline? ` +
        "restart with --sdk-url pointing at a local copy",
      "error",
    );
    throw error;
  }
}

function unmountAll() {
  for (const instance of mounted) {
    try {
      instance.unmount();
    } catch (error) {
      console.warn("unmount failed", error);
    }
  }
  mounted = [];
}

async function mountCheckout(customerId, invoiceId, view) {
  const mine = ++generation;
  unmountAll();
  session = { expiresAt: null, renewals: 0 };
  showSession("fetching…");
  $("stage-flow").hidden = view !== "flow";
  $("stage-components").hidden = view !== "components";

  const { AlternativeClient } = await loadSdk();
  if (mine !== generation) return;
  let token;
  try {
    token = await getSession(customerId, invoiceId, "initial");
  } catch {
    showSession("failed");
    return;
  }
  if (mine !== generation) return;

  const client = await AlternativeClient.create({
    accessToken: token,
    baseUrl: config.brokerUrl, // the broker, origin only: the SDK appends /checkout/...
    // Called once per request the broker answered 401 (the session expired); the SDK
    // retries that request with the token this resolves to.
    onAccessTokenExpired: async () => {
      session.renewals += 1;
      log("token_expired", "the broker answered 401: the SDK called onAccessTokenExpired");
      return getSession(customerId, invoiceId, "renewal");
    },
  });
  if (mine !== generation) return;
  log("client_created", `AlternativeClient.create({ baseUrl: "${config.brokerUrl}" })`);

  if (view === "flow") {
    const flow = client.createPaymentFlow({
      containerId: "checkout",
      invoiceId, // required: without it the flow loads nothing
      customerId,
      onPaymentSuccess: (payment) =>
        log("payment_succeeded", `onPaymentSuccess: ${payment.status ?? "ok"}, id ${payment.id}`, "info", {
          paymentId: payment.id,
        }),
      onPaymentError: (error) => log("payment_failed", `onPaymentError: ${error.message}`, "error"),
      onGoBack: () => log("go_back", "onGoBack: a real site would navigate away now"),
      onClose: () => log("flow_closed", "onClose"),
    });
    flow.mount();
    mounted.push(flow);
    log("flow_mounted", `createPaymentFlow({ containerId: "checkout", invoiceId: "${invoiceId}" })`);
  } else {
    const detail = client.components.invoiceDetail({
      containerId: "invoice-detail",
      invoiceId,
      onPayNow: (invoice) => log("pay_now", `onPayNow: invoice ${invoice.invoice_number}`),
      onError: (error) => log("component_error", error.message, "error"),
    });
    const methods = client.components.paymentMethodSelect({
      containerId: "payment-methods",
      customerId,
      onSelect: (method) => log("method_selected", `onSelect: ${method.type} ••${method.last4}`),
      onAddNew: () => log("add_new", "onAddNew: a real site would mount addPaymentMethod"),
      onError: (error) => log("component_error", error.message, "error"),
    });
    detail.mount();
    methods.mount();
    mounted.push(detail, methods);
    log("components_mounted", "invoiceDetail and paymentMethodSelect");
  }
}

// ---- the picker ----------------------------------------------------------------

function fillInvoices(customerId, selected) {
  const customer = config.customers.find((c) => c.id === customerId) ?? config.customers[0];
  const select = $("invoice");
  select.replaceChildren(
    ...customer.invoices.map((invoice) => {
      const option = new Option(
        `${invoice.number} · ${invoice.total} ${invoice.currency.toUpperCase()} · ` +
          `${invoice.status.toLowerCase()} · ${invoice.id}`,
        invoice.id,
      );
      option.selected = invoice.id === selected;
      return option;
    }),
  );
}

function currentChoice() {
  return {
    customerId: $("customer").value,
    invoiceId: $("invoice").value,
    view: document.querySelector('input[name="view"]:checked').value,
  };
}

function start() {
  const { customerId, invoiceId, view } = currentChoice();
  const query = new URLSearchParams({ customer: customerId, invoice: invoiceId, view });
  history.replaceState(null, "", `?${query}`);
  log("load", `${view === "flow" ? "payment flow" : "components"} for ${customerId} / ${invoiceId}`);
  mountCheckout(customerId, invoiceId, view).catch((error) => {
    log("error", error.message, "error");
  });
}

function init() {
  $("page-origin").textContent = location.origin;
  $("broker-url").textContent = config.brokerUrl ?? "(starting)";
  $("sdk-url").textContent = config.sdkUrl;
  $("sandbox-requests").href = `${config.sandboxUrl}/_sandbox/requests`;
  $("sandbox-stats").href = `${config.sandboxUrl}/_sandbox/stats`;
  if (config.sessionTtl > 120) {
    $("ttl-hint").textContent =
      `Sessions last ${config.sessionTtl} s here; start the broker with ` +
      "BROKER_SESSIONS_TTL=30 to watch a renewal.";
  }

  const params = new URLSearchParams(location.search);
  const customers = $("customer");
  customers.replaceChildren(
    ...config.customers.map((c) => new Option(`${c.name} · ${c.id}`, c.id)),
  );
  const wanted = config.customers.find((c) => c.id === params.get("customer"));
  customers.value = (wanted ?? config.customers[0]).id;
  fillInvoices(customers.value, params.get("invoice"));
  const view = params.get("view") === "components" ? "components" : "flow";
  document.querySelector(`input[name="view"][value="${view}"]`).checked = true;

  customers.addEventListener("change", () => fillInvoices(customers.value, null));
  $("picker").addEventListener("submit", (event) => {
    event.preventDefault();
    start();
  });
  $("clear-log").addEventListener("click", () => logList.replaceChildren());

  // The broker allows exactly the origins it was told (this site's own, by itself in
  // sandbox mode). The same page opened under another name, e.g. localhost instead of
  // 127.0.0.1, is another origin: every SDK call is refused at the preflight and the
  // widget stays empty. Say so instead of leaving the visitor to guess.
  if (!config.allowedOrigins.includes(location.origin)) {
    const warning = $("origin-warning");
    warning.hidden = false;
    warning.textContent =
      `This page's origin ${location.origin} is not one the broker allows ` +
      `(${config.allowedOrigins.join(", ")}): the SDK's calls will be refused and the ` +
      `widget stays empty. Open ${config.siteUrl}/ or restart the broker with ` +
      `--cors-origin ${location.origin}.`;
    log("origin_not_allowed", `${location.origin} is not in cors.allowed_origins`, "error");
  }
  start();
}

init();
