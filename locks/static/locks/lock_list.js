// The locks list polls itself every 5 s (templates/locks/_locks.html). While an operator
// has a force-release form open in a row, a poll would replace the row and throw away
// the reason being typed: hold the poll until the form is sent or cancelled.
document.addEventListener("htmx:beforeRequest", function (event) {
  var elt = event.detail.elt;
  if (elt.id === "locks" && elt.querySelector("form.release")) {
    event.preventDefault();
  }
});
