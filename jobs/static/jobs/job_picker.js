// Searchable job pickers: a text input with class "job-picker", a `list` naming its
// <datalist>, and data-names-url (the /jobs/names/ endpoint). As the user types, the
// datalist is refilled with the job names containing what was typed (debounced), so a
// list of thousands of jobs is never sent whole. Without this script the input still
// takes a job's name or id.
(function () {
  "use strict";
  var DELAY_MS = 200;

  function attach(input) {
    var list = document.getElementById(input.getAttribute("list"));
    var url = input.dataset.namesUrl;
    if (!list || !url) return;
    var timer = null;
    var asked = null;

    function refill() {
      var q = input.value.trim();
      if (q === asked) return;
      asked = q;
      fetch(url + "?q=" + encodeURIComponent(q), {
        headers: { Accept: "text/html" },
        credentials: "same-origin",
      })
        .then(function (response) {
          return response.ok ? response.text() : "";
        })
        .then(function (html) {
          // The fragment is <option> elements rendered (and escaped) by the server.
          var parsed = new DOMParser().parseFromString("<datalist>" + html + "</datalist>", "text/html");
          var options = parsed.querySelectorAll("option");
          list.replaceChildren.apply(list, Array.prototype.slice.call(options));
        })
        .catch(function () {
          asked = null; // try again on the next keystroke
        });
    }

    input.addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(refill, DELAY_MS);
    });
    input.addEventListener("focus", refill, { once: true });
  }

  function init() {
    document.querySelectorAll("input.job-picker").forEach(attach);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
