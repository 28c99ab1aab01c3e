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
