/**
 * A long history in the chat panel, shown from its end (DESIGN §8: a
 * 2,000-turn conversation shows in <= 0.5 s).
 *
 * @jupyter/chat renders every message it is given, each through the
 * rendermime, and a whole 2,000-turn history is 650 kB in one comm message:
 * the kernel sends the latest exchanges only (`history`), and the page before
 * them when the user scrolls to the top of the list or presses "Show earlier"
 * (`history_page`), shown above the others. The scroll position stays where
 * the user was reading.
 */
import { Widget } from '@lumino/widgets';

import { formatCount } from './costFormat';
import type { ISignal } from '@lumino/signaling';

/** Distance (px) from the top of the list at which earlier messages are asked for. */
const NEAR_TOP = 120;

/** What the control needs of the panel's chat model. */
export interface IEarlierSource {
  /** How many earlier messages are not shown. */
  readonly earlierCount: number;
  /** The next page of them was asked for and has not arrived. */
  readonly earlierLoading: boolean;
  /** Ask for the next page of them, to show above the others. */
  showEarlier(): void;
  /** Emitted when ``earlierCount`` or ``earlierLoading`` changes. */
  readonly earlierChanged: ISignal<unknown, void>;
  /** Emitted just before a page goes in above the others. */
  readonly earlierArriving: ISignal<unknown, void>;
}

/**
 * The "N earlier messages · Show earlier" line above the chat, and the same
 * on scrolling to the top of the message list (found in ``chatNode`` once
 * @jupyter/chat has rendered it).
 */
export class EarlierControl extends Widget {
  constructor(source: IEarlierSource, chatNode: HTMLElement) {
    super();
    this._source = source;
    this._chatNode = chatNode;
    this.addClass('jp-llmchat-earlier');
    this._text = document.createElement('span');
    this._button = document.createElement('button');
    this._button.type = 'button';
    this._button.className = 'jp-llmchat-button jp-llmchat-show-earlier';
    this._button.textContent = 'Show earlier';
    this._button.addEventListener('click', () => this._showEarlier());
    this.node.append(this._text, ' · ', this._button);
    source.earlierChanged.connect(this._render, this);
    source.earlierArriving.connect(this._keepInView, this);
    chatNode.addEventListener('scroll', this._onScroll, {
      capture: true,
      passive: true
    });
    chatNode.addEventListener('wheel', this._onWheel, { passive: true });
    this._render();
  }

  override dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this._source.earlierChanged.disconnect(this._render, this);
    this._source.earlierArriving.disconnect(this._keepInView, this);
    this._chatNode.removeEventListener('scroll', this._onScroll, {
      capture: true
    });
    this._chatNode.removeEventListener('wheel', this._onWheel);
    super.dispose();
  }

  private _render(): void {
    const n = this._source.earlierCount;
    this.node.hidden = n === 0;
    this._text.textContent =
      n === 1 ? '1 earlier message' : `${formatCount(n)} earlier messages`;
    const loading = this._source.earlierLoading;
    this._button.disabled = loading;
    this._button.textContent = loading ? 'Loading…' : 'Show earlier';
  }

  /**
   * Scroll events do not bubble, but the chat's node sees them in its capture
   * phase: this follows the message list whatever React re-creates under it.
   */
  private readonly _onScroll = (event: Event): void => {
    const el = event.target;
    if (
      el instanceof HTMLElement &&
      el.querySelector('.jp-chat-messages-container') !== null
    ) {
      this._nearTop(el);
    }
  };

  /** A wheel up at the very top scrolls nothing, so it fires no scroll event. */
  private readonly _onWheel = (event: WheelEvent): void => {
    const el = findScroller(this._chatNode);
    if (event.deltaY < 0 && el !== null && el.contains(event.target as Node)) {
      this._nearTop(el);
    }
  };

  private _nearTop(scroller: HTMLElement): void {
    if (scroller.scrollTop < NEAR_TOP && this._source.earlierCount > 0) {
      this._showEarlier(true);
    }
  }

  /** Ask for the page above (the kernel sends it: see ``_keepInView``). */
  private _showEarlier(fromScroll = false): void {
    // A scroll near the top while a page lays out would ask for page after
    // page; a press of the button always asks for one.
    if ((fromScroll && this._settling) || this._source.earlierCount === 0) {
      return;
    }
    this._source.showEarlier();
  }

  /**
   * A page is going in above: keep in view what the user was reading (the
   * message that was first stays where it was while the new ones render above
   * it; their Markdown lays out over a few frames).
   */
  private _keepInView(): void {
    const generation = ++this._generation;
    const el = findScroller(this._chatNode);
    const anchor = el?.querySelector<HTMLElement>('.jp-chat-message') ?? null;
    const offset = (): number =>
      el !== null && anchor !== null
        ? anchor.getBoundingClientRect().top - el.getBoundingClientRect().top
        : 0;
    const before = offset();
    this._settling = true;
    let frames = 0;
    let stable = 0;
    let height = el?.scrollHeight ?? 0;
    const keep = (): void => {
      if (generation !== this._generation) {
        return; // a later page keeps its own anchor
      }
      if (el !== null && anchor !== null && anchor.isConnected) {
        el.scrollTop += offset() - before;
      }
      const now = el?.scrollHeight ?? 0;
      stable = now === height ? stable + 1 : 0;
      height = now;
      if (++frames < 120 && stable < 10) {
        requestAnimationFrame(keep);
      } else {
        this._settling = false;
      }
    };
    requestAnimationFrame(keep);
  }

  private readonly _source: IEarlierSource;
  private readonly _chatNode: HTMLElement;
  private readonly _text: HTMLSpanElement;
  private readonly _button: HTMLButtonElement;
  /** A page is laying out under ``_keepInView``. */
  private _settling = false;
  private _generation = 0;
}

/** The element that scrolls @jupyter/chat's message list, once rendered. */
export function findScroller(root: HTMLElement): HTMLElement | null {
  const box = root.querySelector<HTMLElement>('.jp-chat-messages-container');
  let scroller = box?.parentElement ?? null;
  while (scroller !== null && scroller !== root) {
    if (getComputedStyle(scroller).overflowY === 'scroll') {
      return scroller;
    }
    scroller = scroller.parentElement;
  }
  return null;
}
