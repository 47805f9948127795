// Building DOM without innerHTML: every string the API sends ends up as a text node, never as markup.

const SVG_NS = "http://www.w3.org/2000/svg";

function append(node, child) {
  if (child === null || child === undefined || child === false) return;
  if (Array.isArray(child)) {
    for (const c of child) append(node, c);
  } else if (child instanceof Node) {
    node.appendChild(child);
  } else {
    node.appendChild(document.createTextNode(String(child)));
  }
}

function setAttrs(node, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      node.addEventListener(key.slice(2).toLowerCase(), value);
    } else if (key === "testid") {
      node.setAttribute("data-testid", value);
    } else if (key === "style") {
      node.style.cssText = value; // through CSSOM: the Content-Security-Policy refuses style attributes
    } else if (key === "dataset") {
      Object.assign(node.dataset, value);
    } else if (value === true) {
      node.setAttribute(key, "");
    } else {
      node.setAttribute(key, String(value));
    }
  }
}

/** An HTML element: h("div", {class: "card", testid: "x"}, child, [more children], "text"). */
export function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  if (attrs && (attrs instanceof Node || Array.isArray(attrs) || typeof attrs !== "object")) {
    children.unshift(attrs);
    attrs = null;
  }
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

/** An SVG element, like h(). */
export function s(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  append(node, children);
  return node;
}

export function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

/** Replace `node`'s children with `children` (null, undefined and false are skipped, unlike Element.append). */
export function fill(node, ...children) {
  append(clear(node), children);
  return node;
}

/** A test id made of parts, safe in CSS attribute selectors: anything but letters, digits and "._-" becomes "_". */
export function tid(...parts) {
  return parts.map((p) => String(p).replace(/[^A-Za-z0-9._-]+/g, "_")).join("-");
}
