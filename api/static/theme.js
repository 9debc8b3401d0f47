// Runs before the first paint: apply the theme the visitor chose, if any.
// Without a choice the stylesheet follows prefers-color-scheme.
(function () {
  try {
    var chosen = localStorage.getItem("explorer-theme");
    if (chosen === "dark" || chosen === "light") {
      document.documentElement.setAttribute("data-theme", chosen);
    }
  } catch (e) {
    // Storage may be disabled; the system preference still applies.
  }
})();
