// Under a job form's target select: the chosen target's description and parameters,
// fetched from the dashboard (jobs/_target_help.html) on load and on every change.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("select[data-target-help]").forEach(function (select) {
    var box = document.createElement("div");
    box.className = "target-help-box";
    select.insertAdjacentElement("afterend", box);
    function show() {
      var url = select.dataset.targetHelp + "?target=" + encodeURIComponent(select.value);
      fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } })
        .then(function (response) { return response.ok ? response.text() : ""; })
        .then(function (html) { box.innerHTML = html; });
    }
    select.addEventListener("change", show);
    show();
  });
});
