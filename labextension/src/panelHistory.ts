/**
 * A long history in the chat panel, shown from its end (DESIGN §8: a
 * 2,000-turn conversation shows in <= 0.5 s).
 *
 * @jupyter/chat renders every message it is given, each through the
 * rendermime, so giving it a whole 2,000-turn history took seconds. The
 * panel's model gives it the latest messages only and keeps the earlier ones
 * here, as the kernel sent them (not yet turned into chat messages); they are
 * shown a page at a time, above the others, when the user scrolls to the top
 * of the list or presses "Show earlier". The scroll position stays where the
 * user was reading.
 */
import { Widget } from '@lumino/widgets';
import type { ISignal } from '@lumino/signaling';

/** Messages shown when a history arrives: the latest exchanges. */
export const FIRST_SHOWN = 40;
/** Messages added above at each scroll to the top (or "Show earlier"). */
export const PAGE = 40;
/** Distance (px) from the top of the list at which earlier messages are added. */
const NEAR_TOP = 120;

/** The history's messages not shown yet: all of them before the shown ones. */
export class EarlierMessages<T> {
  /** Keep all but the last ``shown`` of ``all``; return those last ones. */
  reset(all: readonly T[], shown = FIRST_SHOWN): T[] {
    const cut = Math.max(0, all.length - shown);
    this._kept = all.slice(0, cut);
    return all.slice(cut);
  }

  /** The last ``n`` kept messages (the ones just before those shown), no longer kept. */
  take(n = PAGE): T[] {
    const cut = Math.max(0, this._kept.length - n);
    const page = this._kept.slice(cut);
    this._kept = this._kept.slice(0, cut);
    return page;
  }

  clear(): void {
    this._kept = [];
  }

  get count(): number {
    return this._kept.length;
  }

  private _kept: T[] = [];
}

/** What the control needs of the panel's chat model. */
export interface IEarlierSource {
  /** How many earlier messages are not shown. */
  readonly earlierCount: number;
  /** Show the next page of them above the others. */
  showEarlier(): void;
  /** Emitted when ``earlierCount`` changes. */
  readonly earlierChanged: ISignal<unknown, void>;
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
    this._render();
  }

  override dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this._source.earlierChanged.disconnect(this._render, this);
    this._scroller?.removeEventListener('scroll', this._onScroll);
    this._scroller = null;
    super.dispose();
  }

  private _render(): void {
    const n = this._source.earlierCount;
    this.node.hidden = n === 0;
    this._text.textContent =
      n === 1 ? '1 earlier message' : `${n.toLocaleString('en-US')} earlier messages`;
    if (n > 0) {
      this._watchScroll();
    }
  }

  /** Listen to the message list's scroller, once it exists. */
  private _watchScroll(): void {
    if (this._scroller !== null) {
      return;
    }
    const scroller = findScroller(this._chatNode);
    if (scroller === null) {
      // Rendered by React after the history arrived: look again on the next frame.
      requestAnimationFrame(() => {
        if (!this.isDisposed && this._source.earlierCount > 0) {
          this._watchScroll();
        }
      });
      return;
    }
    this._scroller = scroller;
    scroller.addEventListener('scroll', this._onScroll, { passive: true });
  }

  private readonly _onScroll = (): void => {
    const el = this._scroller;
    if (el !== null && el.scrollTop < NEAR_TOP && this._source.earlierCount > 0) {
      this._showEarlier();
    }
  };

  /** Add a page above, keeping in view what the user was reading. */
  private _showEarlier(): void {
    if (this._loading || this._source.earlierCount === 0) {
      return;
    }
    const el = this._scroller ?? findScroller(this._chatNode);
    const fromBottom = el === null ? 0 : el.scrollHeight - el.scrollTop;
    const height = el?.scrollHeight ?? 0;
    this._loading = true;
    this._source.showEarlier();
    // React renders the new messages on a later frame: wait for the list to grow.
    let frames = 0;
    const restore = (): void => {
      if (el !== null && el.scrollHeight === height && ++frames < 30) {
        requestAnimationFrame(restore);
        return;
      }
      if (el !== null) {
        el.scrollTop = el.scrollHeight - fromBottom;
      }
      this._loading = false;
    };
    requestAnimationFrame(restore);
  }

  private readonly _source: IEarlierSource;
  private readonly _chatNode: HTMLElement;
  private readonly _text: HTMLSpanElement;
  private readonly _button: HTMLButtonElement;
  private _scroller: HTMLElement | null = null;
  private _loading = false;
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
