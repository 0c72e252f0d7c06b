// The executions list's bulk selection (templates/jobs/_bulk_bar.html). The form works
// without this file; it adds a "select every row on this page" box, a count of what is
// selected, disables the action buttons while nothing is, and keeps the ticks when the
// table (which refreshes itself while runs are live, and on every filter) is swapped.
"use strict";
(function () {
  var selected = new Set();
  var allMatching = false;

  function rows(root) { return root.querySelectorAll("input[data-bulk-row]"); }

  function render() {
    var form = document.getElementById("bulk-form");
    if (!form) { return; }
    var all = form.querySelector("input[data-bulk-all-matching]");
    var count = form.querySelector("[data-bulk-count]");
    var pageBox = document.querySelector("input[data-bulk-page]");
    var boxes = rows(document);
    all.checked = allMatching;
    var onPage = 0;
    boxes.forEach(function (box) {
      box.checked = allMatching || selected.has(box.value);
      box.disabled = allMatching;
      if (box.checked) { onPage += 1; }
    });
    if (pageBox) {
      pageBox.checked = boxes.length > 0 && onPage === boxes.length;
      pageBox.disabled = allMatching;
    }
    if (allMatching) {
      count.textContent = "All matching this filter selected.";
    } else if (selected.size) {
      count.textContent = selected.size + " selected.";
    } else {
      count.textContent = "Tick executions below, or:";
    }
    form.querySelectorAll("button[data-bulk-action]").forEach(function (button) {
      button.disabled = !allMatching && selected.size === 0;
    });
    // Ticked rows that left the page (another page, a refresh) are still sent.
    form.querySelectorAll("input[data-bulk-kept]").forEach(function (input) { input.remove(); });
    var shown = new Set(Array.prototype.map.call(boxes, function (box) { return box.value; }));
    if (!allMatching) {
      selected.forEach(function (id) {
        if (shown.has(id)) { return; }
        var input = document.createElement("input");
        input.type = "hidden";
        input.name = "ids";
        input.value = id;
        input.setAttribute("data-bulk-kept", "");
        form.appendChild(input);
      });
    }
  }

  document.addEventListener("change", function (event) {
    var box = event.target;
    if (box.matches("input[data-bulk-row]")) {
      if (box.checked) { selected.add(box.value); } else { selected.delete(box.value); }
    } else if (box.matches("input[data-bulk-page]")) {
      rows(document).forEach(function (row) {
        if (box.checked) { selected.add(row.value); } else { selected.delete(row.value); }
      });
    } else if (box.matches("input[data-bulk-all-matching]")) {
      allMatching = box.checked;
    } else if (box.closest(".execution-filters")) {
      // Another filter: what was ticked may not match it.
      selected.clear();
      allMatching = false;
    } else {
      return;
    }
    render();
  });

  document.addEventListener("DOMContentLoaded", render);
  document.body.addEventListener("htmx:afterSettle", render);
})();
