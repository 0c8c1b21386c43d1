// sanitize-html's call as the widgets manager makes it (`sanitize(html, {allowedTags, allowedAttributes})`, for
// widgets with `description_allow_html`), answered by DOMPurify: sanitize-html brings HTML and CSS parsers written for
// Node (~260 kB); DOMPurify uses the browser's own parser. Tags and attributes are the manager's lists; DOMPurify also
// drops `javascript:` URLs and every event handler.
import DOMPurify from 'dompurify';

export default function sanitize(html, { allowedTags, allowedAttributes }) {
  const names = Object.values(allowedAttributes).flat();
  return DOMPurify.sanitize(html, {
    ALLOWED_TAGS: allowedTags,
    ALLOWED_ATTR: names.filter((name) => !name.endsWith('*')),
    ALLOW_ARIA_ATTR: names.includes('aria-*'),
    ALLOW_DATA_ATTR: false,
  });
}
