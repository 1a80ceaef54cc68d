// The dashboard's script: fetch from the API with the session cookie and the CSRF token.
"use strict";
const csrf = document.querySelector('meta[name="csrf-token"]')?.content || "";

async function api(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  const doc = await response.json();
  if (!response.ok) throw new Error(doc.error ? doc.error.message : response.statusText);
  return doc;
}

function cell(text) {
  const td = document.createElement("td");
  td.textContent = text ?? "–";
  return td;
}

async function renderFleet(table) {
  const doc = await api("GET", table.dataset.source);
  const body = table.querySelector("tbody");
  body.replaceChildren(...doc.items.map((vm) => {
    const tr = document.createElement("tr");
    tr.dataset.vm = vm.name;
    tr.append(cell(vm.name), cell(vm.protection), cell(vm.last_backup), cell(vm.consistency), cell(vm.next_run));
    return tr;
  }));
}

document.addEventListener("DOMContentLoaded", () => {
  const fleet = document.getElementById("fleet");
  if (fleet) renderFleet(fleet);
});
