// Overlay toggles on the image page: show/hide one SVG layer per checkbox. No framework.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const boxes = Array.from(document.querySelectorAll("input[data-layer]"));
  const apply = (box) => {
    document.querySelectorAll(`[data-layer-id="${box.dataset.layer}"]`)
      .forEach((el) => el.classList.toggle("hidden", !box.checked));
  };
  boxes.forEach((box) => { box.addEventListener("change", () => apply(box)); apply(box); });
  document.querySelectorAll("button[data-all]").forEach((btn) => {
    btn.addEventListener("click", () => {
      const on = btn.dataset.all === "on";
      boxes.filter((b) => b.dataset.group === btn.dataset.group)
        .forEach((b) => { b.checked = on; apply(b); });
    });
  });
});
