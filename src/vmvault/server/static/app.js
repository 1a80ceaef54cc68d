// The dashboard's script: fetch from the API with the session cookie and the CSRF token.
// Every value reaches the page as text (textContent, text nodes), never as HTML.
"use strict";
const csrf = document.querySelector('meta[name="csrf-token"]')?.content || "";
const FINAL = new Set(["succeeded", "partially_succeeded", "failed", "cancelled"]);
const FLEET_EVERY = 3000; // ms between refreshes of the fleet
const JOBS_EVERY = 1000; // ms between refreshes of running jobs

async function api(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  let doc = null;
  try {
    doc = await response.json();
  } catch {
    // not JSON (a proxy's error page): fall back to the status line below
  }
  if (response.status === 401) window.location.assign("/login?error=session"); // the session ended
  if (!response.ok) throw new Error(doc?.error ? doc.error.message : `${response.status} ${response.statusText}`);
  return doc;
}

function canOperate() {
  return document.body.dataset.canOperate === "1";
}

// el("a", {href: "/x", class: "c"}, "text", child): an element; strings become text nodes.
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key in node) node[key] = value;
    else node.setAttribute(key, value);
  }
  node.append(...children.filter((c) => c !== undefined && c !== null));
  return node;
}

const segment = (value) => encodeURIComponent(String(value));

// The same units and times the server's templates write (dashboard.human_bytes, .when).
function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let size = Number(n);
  let unit = 0;
  while (size >= 1024 && unit < units.length - 1) {
    size /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${Math.trunc(size)} B` : `${size.toFixed(1)} ${units[unit]}`;
}

function when(iso) {
  if (!iso) return "–";
  const moment = new Date(iso);
  if (Number.isNaN(moment.getTime())) return String(iso);
  return `${moment.toISOString().slice(0, 19).replace("T", " ")} UTC`;
}

function seconds(s) {
  if (s === null || s === undefined) return "–";
  return s < 60 ? `${s.toFixed(1)} s` : `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

function took(job) {
  if (!job.started_at) return null;
  const end = job.finished_at ? new Date(job.finished_at) : new Date();
  return (end - new Date(job.started_at)) / 1000;
}

function badge(value, kind) {
  return el("span", { class: `badge ${kind}-${value || "none"}` }, value || "–");
}

// A VM's protection against its RPO: protected, at risk, never backed up, not scheduled.
function rpoBadge(status) {
  return el("span", { class: `badge status-${status || "none"}` }, status ? status.replaceAll("_", " ") : "–");
}

// A running job's pace from its progress records (the server's ``live`` figures): the
// rate of the bytes read so far and the time left, e.g. "57.2 MiB/s, 2 min 5 s left".
function pace(job) {
  const live = job.live || {};
  if (job.state !== "running") return "";
  const parts = [live.rate ? `${bytes(live.rate)}/s` : "", live.eta !== null && live.eta !== undefined ? `${seconds(live.eta)} left` : ""];
  return parts.filter(Boolean).join(", ");
}

function progress(job) {
  return el(
    "span",
    { class: "progress" },
    el("progress", { max: 100, value: job.percent }),
    el("span", { class: "pct" }, `${Math.round(job.percent)} %`),
    pace(job) ? el("span", { class: "pace" }, ` ${pace(job)}`) : "",
  );
}

function jobLink(id) {
  return el("a", { href: `/jobs/${segment(id)}` }, `#${id}`);
}

function pointLink(id) {
  return id ? el("a", { href: `/points/${segment(id)}` }, el("code", {}, id)) : "–";
}

function td(...children) {
  return el("td", {}, ...children);
}

function showError(box, error) {
  if (!box) return;
  box.textContent = error ? String(error.message || error) : "";
  box.hidden = !error;
}

// Keep a table's rows in place and redraw only the rows whose data changed, so a button
// or link under the pointer is not swapped out at every refresh.
function syncRows(tbody, items, keyOf, cellsOf) {
  const existing = new Map([...tbody.rows].map((row) => [row.dataset.key, row]));
  const rows = items.map((item) => {
    const key = String(keyOf(item));
    const signature = JSON.stringify(item);
    let row = existing.get(key);
    if (!row) row = el("tr", { dataset: { key } });
    if (row.dataset.signature !== signature) {
      row.replaceChildren(...cellsOf(item, row));
      row.dataset.signature = signature;
    }
    return row;
  });
  tbody.replaceChildren(...rows);
}

// Poll ``tick`` every ``ms`` until it returns false; errors show in ``box`` and polling goes on.
function poll(ms, tick, box) {
  const run = async () => {
    let again = true;
    try {
      again = (await tick()) !== false;
      showError(box, null);
    } catch (error) {
      showError(box, error);
    }
    if (again) setTimeout(run, ms);
  };
  run();
}

// Where a restore job put its disks (and a new VM's configuration), as a list; null for
// another job, or a restore that has written nothing yet.
function restoredList(job) {
  const details = job.kind === "restore" ? job.details || {} : {};
  const disks = details.disks || [];
  if (!disks.length) return null;
  const items = disks.map((d) => el("li", {}, `${d.name}: `, el("code", {}, d.path)));
  if (details.inventory) items.push(el("li", {}, "VM configuration: ", el("code", {}, details.inventory)));
  return el("ul", { class: "restored" }, ...items);
}

// A job followed live in ``box``: its link, state and progress, until it ends.
function watchJob(job, box) {
  const line = el("p", { class: "job-line" });
  // the server's word on a job nothing there will run (`serve --no-scheduler`), while queued
  const note = job.note ? el("p", { class: "job-note" }, job.note) : null;
  box.replaceChildren(line);
  const draw = (current) => {
    const parts = [
      `${current.kind} job `,
      jobLink(current.id),
      " ",
      badge(current.state, "state"),
      " ",
      progress(current),
    ];
    if (current.point_id && current.kind === "backup") parts.push(" point ", pointLink(current.point_id));
    if (current.error_message) parts.push(" ", el("span", { class: "error" }, current.error_message));
    line.replaceChildren(...parts);
    // A restore says where its disks went.
    const restored = restoredList(current);
    box.replaceChildren(...[line, current.state === "queued" && note, restored].filter(Boolean));
  };
  draw(job);
  poll(JOBS_EVERY, async () => {
    const current = await api("GET", `/api/v1/jobs/${segment(job.id)}`);
    draw(current);
    return !FINAL.has(current.state);
  });
}

// -- fleet ---------------------------------------------------------------------------------

// Queue a backup of ``name`` now; the button stays disabled while the request is out.
async function backUp(name, button) {
  button.disabled = true;
  try {
    return await api("POST", `/api/v1/vms/${segment(name)}/backup`, {});
  } finally {
    button.disabled = false;
  }
}

function fleetCells(vm, row) {
  const cells = [
    td(el("a", { href: `/vms/${segment(vm.name)}` }, vm.name), el("span", { class: "sub" }, vm.host)),
    // Protected or at risk by the reports' rule (its RPO), as the tiles count it; a
    // stopped protection's state beside it.
    td(rpoBadge(vm.rpo_status), ...(vm.protection !== "protected" ? [" ", badge(vm.protection, "protection")] : [])),
    td(vm.last_point ? el("a", { href: `/points/${segment(vm.last_point)}` }, when(vm.last_backup)) : "never"),
    td(vm.consistency ? badge(vm.consistency, "consistency") : "–"),
    el("td", { class: "num" }, String(vm.points)),
    td(when(vm.next_run)),
    td(...(vm.active_job ? [jobLink(vm.active_job), " ", badge(vm.active_job_state, "state")] : ["–"])),
  ];
  if (canOperate()) {
    if (!row.actionCell) {
      const button = el("button", { type: "button", class: "backup", dataset: { backup: vm.name } }, "Back up now");
      const note = el("span", { class: "note" });
      row.actionCell = el("td", { class: "action" }, button, note);
      button.addEventListener("click", async () => {
        try {
          const job = await backUp(vm.name, button);
          // the job's link stays; its state (queued, running) is the Active job column's
          note.replaceChildren(" job ", jobLink(job.id));
          refreshFleet();
        } catch (error) {
          note.replaceChildren(el("span", { class: "error" }, error.message));
        }
      });
    }
    const button = row.actionCell.querySelector("button");
    button.disabled = Boolean(vm.active_job);
    button.title = vm.active_job ? "a job of this VM is queued or running" : "";
    cells.push(row.actionCell);
  }
  return cells;
}

let refreshFleet = () => {};

function renderFleet(table) {
  const box = table.parentElement.querySelector(".error");
  const body = table.querySelector("tbody");
  const tick = async () => {
    const doc = await api("GET", table.dataset.source);
    syncRows(body, doc.items, (vm) => vm.name, fleetCells);
    table.dataset.loaded = "1";
  };
  refreshFleet = () => tick().catch((error) => showError(box, error));
  poll(FLEET_EVERY, tick, box);
}

// -- jobs ----------------------------------------------------------------------------------

// A job run from the command line (`vmvault backup img`) was never queued: its row has no
// queue time, attempts or worker. Shown as `vmvault jobs` shows it: its created time, the
// one attempt it ran, and the command line as its worker.
const queuedAt = (job) => job.queued_at || job.created_at;
const ranDirectly = (job) => !job.queued_at && !job.worker;

function jobCells(job) {
  return [
    td(jobLink(job.id)),
    td(job.kind),
    td(job.vm ? el("a", { href: `/vms/${segment(job.vm)}` }, job.vm) : "–"),
    td(badge(job.state, "state")),
    td(progress(job)),
    td(when(queuedAt(job))),
    el("td", { class: "num" }, seconds(took(job))),
    td(pointLink(job.point_id)),
    el("td", { class: "error" }, job.error_message ? `${job.error_code}: ${job.error_message}` : ""),
  ];
}

function pagerLinks(nav, doc, query) {
  if (doc.total <= doc.limit) {
    nav.hidden = true;
    return;
  }
  const link = (offset, text) => el("a", { href: `?${new URLSearchParams({ ...query, offset })}` }, text);
  nav.replaceChildren(
    doc.offset > 0 ? link(Math.max(doc.offset - doc.limit, 0), "Newer") : "",
    el("span", {}, `${doc.offset + 1}–${Math.min(doc.offset + doc.limit, doc.total)} of ${doc.total}`),
    doc.offset + doc.limit < doc.total ? link(doc.offset + doc.limit, "Older") : "",
  );
  nav.hidden = false;
}

function renderJobs(table) {
  const box = table.parentElement.querySelector(".error");
  const nav = table.parentElement.querySelector(".pager");
  const query = {};
  if (table.dataset.vm) query.vm = table.dataset.vm;
  if (table.dataset.state) query.state = table.dataset.state;
  poll(
    JOBS_EVERY,
    async () => {
      const doc = await api("GET", table.dataset.source);
      syncRows(table.querySelector("tbody"), doc.items, (job) => job.id, jobCells);
      pagerLinks(nav, doc, query);
      table.dataset.loaded = "1";
    },
    box,
  );
}

function renderJob(section) {
  const field = (name) => section.querySelector(`[data-field="${name}"]`);
  const cancel = document.getElementById("cancel");
  if (cancel) {
    cancel.addEventListener("click", async () => {
      cancel.disabled = true;
      try {
        await api("POST", `/api/v1/jobs/${segment(section.dataset.job)}/cancel`);
      } catch (error) {
        showError(field("error"), error);
      }
    });
  }
  poll(JOBS_EVERY, async () => {
    const job = await api("GET", `/api/v1/jobs/${segment(section.dataset.job)}`);
    const state = field("state");
    state.textContent = job.state;
    state.className = `badge state-${job.state}`;
    section.querySelector(".job-head progress").value = job.percent;
    field("percent").textContent = `${Math.round(job.percent)} %`;
    field("queued_at").textContent = when(queuedAt(job));
    for (const name of ["started_at", "finished_at"]) field(name).textContent = when(job[name]);
    field("queue_wait").textContent = seconds(job.queue_wait);
    const live = job.live || {};
    field("elapsed").textContent = seconds(live.elapsed);
    field("rate").textContent = live.rate ? `${bytes(live.rate)}/s` : "–";
    field("eta").textContent = job.state === "running" ? seconds(live.eta) : "–";
    field("attempts").textContent = String(job.attempts || (job.started_at ? 1 : 0));
    field("worker").textContent = job.worker || (ranDirectly(job) ? "command line" : "–");
    for (const name of ["bytes_read", "bytes_changed", "bytes_sent", "bytes_written"]) {
      if (field(name)) field(name).textContent = bytes(job[name]); // those of the job's kind
    }
    // a running job's counters land on its row when it ends: meanwhile, what it read so far
    if (job.state === "running" && live.read !== null && live.read !== undefined && field("bytes_read")) {
      field("bytes_read").textContent = `${bytes(live.read)} so far`;
    }
    field("point_id").replaceChildren(pointLink(job.point_id));
    const error = job.error_message ? `${job.error_code}: ${job.error_message}` : "";
    field("error").textContent = error;
    field("error").hidden = !error;
    const disks = Object.entries(job.progress).map(([name, d]) => ({ name, ...d }));
    syncRows(section.querySelector(".disk-progress tbody"), disks, (d) => d.name, (d) => [
      td(d.name),
      td(d.operation),
      td(el("progress", { max: d.total || 1, value: d.done })),
      el("td", { class: "num" }, bytes(d.done)),
      el("td", { class: "num" }, bytes(d.total)),
    ]);
    field("details").textContent = JSON.stringify(job.details, null, 2);
    const restored = restoredList(job); // shown plainly, not only in the raw details
    field("restored").hidden = !restored;
    if (restored) field("restored").replaceChildren(el("h2", {}, "Restored to"), restored);
    if (cancel) cancel.hidden = FINAL.has(job.state) || job.cancel_requested;
    section.dataset.state = job.state;
    return !FINAL.has(job.state);
  });
}

// -- a VM, a point: actions ------------------------------------------------------------------

function wireActions() {
  const box = document.querySelector(".job-watch");
  for (const button of document.querySelectorAll("button[data-backup]")) {
    if (button.closest("#fleet")) continue; // the fleet's buttons are wired per row
    button.addEventListener("click", async () => {
      try {
        watchJob(await backUp(button.dataset.backup, button), box);
      } catch (error) {
        box.replaceChildren(el("p", { class: "error", role: "alert" }, error.message));
      }
    });
  }
  const verify = document.getElementById("verify");
  if (verify) {
    verify.addEventListener("click", async () => {
      verify.disabled = true;
      try {
        watchJob(await api("POST", `/api/v1/points/${segment(verify.dataset.point)}/verify`), box);
      } catch (error) {
        box.replaceChildren(el("p", { class: "error", role: "alert" }, error.message));
      } finally {
        verify.disabled = false;
      }
    });
  }
  const forget = document.getElementById("forget");
  if (forget) {
    forget.addEventListener("click", async () => {
      const result = document.querySelector(".forget-result");
      if (!window.confirm(`Forget recovery point ${forget.dataset.point}? This cannot be undone.`)) return;
      forget.disabled = true;
      try {
        await api("DELETE", `/api/v1/points/${segment(forget.dataset.point)}`);
        window.location.assign(`/vms/${segment(forget.dataset.vm)}`);
      } catch (error) {
        result.replaceChildren(el("span", { class: "error", role: "alert" }, error.message));
        forget.disabled = false;
      }
    });
  }
  const maintenance = document.getElementById("maintenance");
  if (maintenance) {
    maintenance.addEventListener("click", async () => {
      maintenance.disabled = true;
      try {
        watchJob(await api("POST", "/api/v1/maintenance"), box);
      } catch (error) {
        box.replaceChildren(el("p", { class: "error", role: "alert" }, error.message));
      } finally {
        maintenance.disabled = false;
      }
    });
  }
  const restore = document.getElementById("restore");
  if (restore) {
    restore.addEventListener("submit", async (event) => {
      event.preventDefault();
      const button = restore.querySelector("button");
      button.disabled = true;
      try {
        const form = restore.elements;
        const inPlace = restore.querySelector('input[name="mode"]:checked')?.value === "in_place";
        const body = {
          vm: restore.dataset.vm,
          point: restore.dataset.point,
          disks: [...restore.querySelectorAll('input[name="disk"]:checked')].map((box) => box.value),
          in_place: inPlace,
        };
        if (inPlace) body.confirm = form.confirm.value.trim();
        else {
          body.new_name = form.new_name.value.trim();
          if (form.format.value) body.format = form.format.value;
        }
        watchJob(await api("POST", "/api/v1/restores", body), box);
      } catch (error) {
        box.replaceChildren(el("p", { class: "error", role: "alert" }, error.message));
      } finally {
        button.disabled = false;
      }
    });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const fleet = document.getElementById("fleet");
  if (fleet) renderFleet(fleet);
  const jobs = document.getElementById("jobs");
  if (jobs) renderJobs(jobs);
  const job = document.getElementById("job");
  if (job) renderJob(job);
  wireActions();
});
