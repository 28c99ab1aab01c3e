// Copy buttons for the channel snippets. navigator.clipboard exists only on https and localhost,
// so plain-http servers fall back to a selected textarea and execCommand("copy").
function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) return navigator.clipboard.writeText(text);
  return new Promise((resolve, reject) => {
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    const copied = document.execCommand("copy");
    area.remove();
    if (copied) resolve(); else reject(new Error("copy refused"));
  });
}

document.addEventListener("click", (event) => {
  const button = event.target.closest("button.copy");
  if (!button) return;
  copyText(button.dataset.copy).then(
    () => { button.textContent = "Copied"; },
    () => { button.textContent = "Select and copy"; },
  ).finally(() => setTimeout(() => { button.textContent = "Copy"; }, 1500));
});

// The "Create new feed" wizard: picking a connector means a proxy feed; picking "Hosted" drops the connector.
document.addEventListener("change", (event) => {
  const input = event.target;
  const form = input.closest && input.closest("form.wizard");
  if (!form || input.type !== "radio") return;
  if (input.name === "connector") {
    form.querySelector('input[name="kind"][value="proxy"]').checked = true;
  } else if (input.name === "kind" && input.value === "hosted") {
    form.querySelectorAll('input[name="connector"]').forEach((radio) => { radio.checked = false; });
  }
});

// Forms that remove something ask first (data-confirm): deleting a user or a group, revoking a key.
document.addEventListener("submit", (event) => {
  const message = event.target.dataset && event.target.dataset.confirm;
  if (message && !window.confirm(message)) event.preventDefault();
});

// The wizard's "One feed" / "Yes, create two feeds": only the names of the shown choice are required.
document.addEventListener("change", (event) => {
  const input = event.target;
  const form = input.closest && input.closest("form.wizard");
  if (!form || input.name !== "feeds" || input.type !== "radio") return;
  form.querySelectorAll("[data-required-when]").forEach((field) => {
    field.required = field.dataset.requiredWhen === input.value;
  });
});
