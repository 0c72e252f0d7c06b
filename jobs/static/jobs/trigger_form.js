// Trigger forms in the admin: a trigger's own page, and the triggers inline on a job's page.
//  - only the chosen kind's field shows (cron, interval or run at); the server clears the
//    others on save and validates the chosen kind (jobs/forms.py);
//  - a time zone typed in any case becomes its IANA spelling when it matches one, and the
//    date-time labels name the zone they are read in;
//  - the schedule preview (words and next fire times) is asked again, debounced by htmx
//    (hx-trigger "schedule-changed delay:400ms"), while the schedule is typed.
(function () {
  "use strict";

  // Under the CSP: no <style> element from htmx, no eval, no scripts from responses.
  if (window.htmx) {
    window.htmx.config.includeIndicatorStyles = false;
    window.htmx.config.allowEval = false;
    window.htmx.config.allowScriptTags = false;
  }

  var KIND_FIELD = { cron: "cron", interval: "interval", once: "run_at" };
  var LOCAL_TIMES = ["run_at", "start_at", "end_at"];
  var SCHEDULE = ["kind", "cron", "timezone", "interval"];

  // The block holding one trigger's fields, and its form prefix ("" on its own page).
  function blockOf(element) {
    var inline = element.closest(".inline-related[id^='triggers-']");
    if (inline) {
      return inline.classList.contains("empty-form") ? null : inline;
    }
    return element.closest("#trigger_form");
  }

  function prefixOf(block) {
    return block.id === "trigger_form" ? "" : block.id + "-";
  }

  function input(block, name) {
    return block.querySelector("[name='" + prefixOf(block) + name + "']");
  }

  function row(block, name) {
    var field = block.querySelector(".field-" + name);
    return field ? field.closest(".form-row") || field : null;
  }

  function showKind(block) {
    var kind = input(block, "kind");
    if (!kind) {
      return;
    }
    Object.keys(KIND_FIELD).forEach(function (each) {
      var fieldRow = row(block, KIND_FIELD[each]);
      if (fieldRow) {
        fieldRow.classList.toggle("hidden", each !== kind.value);
      }
    });
  }

  // The IANA spelling of a typed zone, from the field's own <datalist>.
  function canonicalZone(box) {
    var typed = box.value.trim().toLowerCase();
    var list = box.list;
    if (!typed || !list) {
      return box.value.trim();
    }
    for (var i = 0; i < list.options.length; i++) {
      if (list.options[i].value.toLowerCase() === typed) {
        return list.options[i].value;
      }
    }
    return box.value.trim();
  }

  function labelZones(block) {
    var box = input(block, "timezone");
    if (!box) {
      return;
    }
    var zone = canonicalZone(box) || "UTC";
    LOCAL_TIMES.forEach(function (name) {
      var fieldRow = row(block, name);
      var label = fieldRow && fieldRow.querySelector("label");
      if (label) {
        label.textContent = label.textContent.replace(/\([^)]*\)/, "(" + zone + ")");
      }
    });
  }

  function askPreview(block) {
    var preview = block.querySelector(".trigger-preview");
    if (preview && window.htmx) {
      window.htmx.trigger(preview, "schedule-changed");
    }
  }

  function isScheduleField(block, target) {
    var name = (target.name || "").slice(prefixOf(block).length);
    return SCHEDULE.indexOf(name) >= 0 || LOCAL_TIMES.some(function (each) {
      return name.indexOf(each + "_") === 0;
    });
  }

  function onEdit(event) {
    var block = event.target.closest ? blockOf(event.target) : null;
    if (!block || !isScheduleField(block, event.target)) {
      return;
    }
    var name = event.target.name.slice(prefixOf(block).length);
    if (name === "kind") {
      showKind(block);
    }
    if (name === "timezone") {
      if (event.type === "change") {
        event.target.value = canonicalZone(event.target);
      }
      labelZones(block);
    }
    askPreview(block);
  }

  // The preview asks with this trigger's schedule fields only (never the job's arguments).
  document.addEventListener("htmx:configRequest", function (event) {
    var preview = event.detail.elt;
    if (!preview.classList || !preview.classList.contains("trigger-preview")) {
      return;
    }
    var block = blockOf(preview);
    if (!block) {
      return;
    }
    var prefix = prefixOf(block);
    var parameters = event.detail.parameters;
    parameters.prefix = prefix.replace(/-$/, "");
    block.querySelectorAll("input, select, textarea").forEach(function (field) {
      if (field.name && field.name.indexOf(prefix) === 0 && isScheduleField(block, field)) {
        parameters[field.name] = field.value;
      }
    });
  });

  function setUp(block) {
    // A row added from the inline's template kept the template's datalist reference.
    var box = input(block, "timezone");
    if (box && box.id) {
      box.setAttribute("list", box.id + "-zones");
    }
    showKind(block);
    labelZones(block);
  }

  document.addEventListener("input", onEdit);
  document.addEventListener("change", onEdit);
  document.addEventListener("formset:added", function (event) {
    var block = event.target.closest(".inline-related[id^='triggers-']");
    if (!block) {
      return;
    }
    if (window.htmx) {
      window.htmx.process(block);
    }
    setUp(block);
    askPreview(block);
  });
  document.addEventListener("DOMContentLoaded", function () {
    var invalid = document.querySelector(".errornote, .errorlist");
    document.querySelectorAll(".inline-related[id^='triggers-'], #trigger_form").forEach(
      function (block) {
        if (block.id === "trigger_form" || !block.classList.contains("empty-form")) {
          setUp(block);
          // After a refused save the form shows what was typed: preview that, not the
          // saved schedule.
          if (invalid) {
            askPreview(block);
          }
        }
      }
    );
  });
})();
